// Launchers of kernels/gdn_chunk (defined in gdn_chunk_kernels.cu; called only by
// gdn_chunk.cpp in CUDA builds). Operands are contiguous CUDA tensors (fp32 unless said) with the
// leading batch dims flattened; the launchers check shapes and the launch.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

// A [M, C, C] -> T [M, C, C] = (I + strictly_lower(A))^-1; C <= 64.
void launch_unit_lower_inverse(const at::Tensor& A, const at::Tensor& T);

// The scan both directions share, per (m, step n in walking order):
//   states[n] = S;  Y = target_n - probe_n S;  S = decay_n S + addend_n + writer_n^T Y
// probe, writer [M, N, C, Dk]; target [M, N, C, Dv] or undefined (zero); addend [M, N, Dk, Dv] or
// undefined (zero); decay [M, N]; initial [M, Dk, Dv] or undefined (zero). Writes states
// [M, N, Dk, Dv] and final [M, Dk, Dv]. reverse walks n = N-1..0. Dk in {32, 64, 128, 256},
// C <= 64, Dv a multiple of 4. starts [N] bool or undefined: the forward walk sets S = 0 at the
// start of a flagged step (before states[n] is written), the reverse walk at its end (the
// adjoint of that reset: no gradient flows past a document's first chunk). y_out [M, N, C, Dv]
// or undefined receives each step's Y; it may be target itself (Y written over it).
void launch_chunk_scan(const at::Tensor& probe, const at::Tensor& writer, const at::Tensor& target,
                       const at::Tensor& addend, const at::Tensor& decay, const at::Tensor& initial,
                       const at::Tensor& starts, bool reverse, const at::Tensor& states,
                       const at::Tensor& final_state, const at::Tensor& y_out = at::Tensor());

// Whether the scan's block for this key dim fits the shared memory of CUDA device `device` (at
// Dk = 256 it needs 170 KB: an H100/H200 has 227 KB per block, an A100 163 KB).
bool chunk_scan_fits_device(int64_t key_dim, int device);

// The fused forward's chunks (gdn_forward_kernels.cu): 64 steps, rows past T zero.
constexpr int64_t kGdnForwardChunk = 64;

// Per (batch, head, chunk n), from k, v [B,T,H,D] and g, beta [B,T,H] (contiguous fp32, D in
// {32, 64, 128, 256}): w, u [M,N,64,D] = W and U' of the chunk's (I + A)^-1 solve, k_decayed
// [M,N,64,D] = diag(e^{Gamma_end - Gamma}) K, decay [M,N] = e^{Gamma_end}; M = B*H; and where
// inverse [M,N,64,64] is given, T = (I + A)^-1 (what training's backward needs).
void launch_gdn_forward_prep(const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
                             const at::Tensor& w, const at::Tensor& u, const at::Tensor& k_decayed,
                             const at::Tensor& decay, const at::Tensor& inverse = at::Tensor());

// Whether the fp32 fused forward's prep and output blocks for head dim D fit device `device`'s
// shared memory (prep needs 165 KB at D = 256).
bool gdn_forward_fits_device(int64_t head_dim, int device);

// o [B,T,H,D] = diag(e^Gamma) Q S_n + (Q K^T * decay, j <= i) U_n per chunk, from q, k, g as
// above, u [M,N,64,D] = U_n and states [M,N,D,D] = S_n (the scan's).
void launch_gdn_forward_output(const at::Tensor& q, const at::Tensor& k, const at::Tensor& g, const at::Tensor& u,
                               const at::Tensor& states, const at::Tensor& o);

// The written-out backward's elementwise work (gdn_backward_kernels.cu), per 64-step chunk of
// [MN, 64, ...] operands (MN = B*H*N chunks; g, beta [MN, 64]; fp32, contiguous):
// scores [MN,64,64] = qk * D with D_ij = e^{Gamma_i - Gamma_j} (j <= i), else 0.
void launch_gdn_backward_scores(const at::Tensor& qk, const at::Tensor& g, const at::Tensor& scores);
// d_qk = d(QK^T) = d_scores * D; d_kk = d(KK^T) + d(KK^T)^T from p (T^T dT T^T): d(KK^T) = -beta_i p_ij D_ij
// below the diagonal, the same mirrored above it, 0 on it; d_beta_a [MN,64] = sum_j -p_ij D_ij kk_ij;
// dg_decay [MN,64] = the decay matrix's part of dg: sum_{j < t <= i} E_ij, E = (d_scores qk + beta_i (-p_ij)
// kk_ij) D_ij. d_qk and d_kk [MN,64,64] are either fp32 and d_scores and p themselves (written over), or bf16
// tensors of their own, rounded to nearest even, for bf16 products (which would round them so as they load
// them: the same products at half the traffic).
void launch_gdn_backward_gates(const at::Tensor& d_scores, const at::Tensor& qk, const at::Tensor& p,
                               const at::Tensor& kk, const at::Tensor& g, const at::Tensor& beta,
                               const at::Tensor& d_qk, const at::Tensor& d_kk, const at::Tensor& d_beta_a,
                               const at::Tensor& dg_decay);
// Whether the gates and inverse kernels form Q K^T and K K^T themselves from q and k: bf16 CUDA rows [B,H,N,64,D]
// of the same sizes (per_chunk_rows: a per-chunk copy, or a view of the time-major inputs) with D 32, 64 or 128,
// each row contiguous, every stride a multiple of 8 elements and the data on 16 bytes.
bool gdn_backward_key_rows_apply(const at::Tensor& q, const at::Tensor& k);
// dO's and U's bf16 rows [B,H,N,64,D] (as gdn_backward_key_rows_apply takes them, with q's sizes), from which
// launch_gdn_backward_gates_from_rows forms d_scores = dO U^T itself.
struct GdnScoreRows {
  at::Tensor d_o, u;
};
// launch_gdn_backward_gates with its [64][64] operands formed in the kernel on the tensor cores: Q K^T and K K^T
// from q and k (gdn_backward_key_rows_apply; chunk c = (b H + h) N + n of d_qk's MN) as bf16 products with
// fp32 accumulation (what a bf16 chunk_gemm product of q and k^T gives, summed in another order), and
// P = T^T dT T^T from T and dT (inverse, d_inverse: bf16 [MN,64,64], contiguous, on 16 bytes), T^T dT carried
// in bf16 hi and lo parts into its product with T^T. No [MN,64,64] fp32 Q K^T, K K^T or P in memory; d_qk
// and d_kk bf16. Either d_scores is given (fp32 [MN,64,64], on 16 bytes) or, d_scores undefined, score_rows:
// then d_scores = dO U^T is formed in the kernel too, as chunk_gemm's bf16 product forms it (the same bits).
void launch_gdn_backward_gates_from_rows(const at::Tensor& d_scores, const GdnScoreRows& score_rows,
                                         const at::Tensor& q, const at::Tensor& k, const at::Tensor& inverse,
                                         const at::Tensor& d_inverse, const at::Tensor& g, const at::Tensor& beta,
                                         const at::Tensor& d_qk, const at::Tensor& d_kk, const at::Tensor& d_beta_a,
                                         const at::Tensor& dg_decay);
// dq = dq_products + e^Gamma d_q_decayed, dk = dk_products + beta e^Gamma d_k_in +
// e^{Gamma_C - Gamma} d_k_decayed, dv = beta d_v_in, and dg, d_beta in full (with d_beta_a,
// dg_decay from the gates and d_chunk_decay [MN] times chunk_decay [MN] = e^{Gamma_C}), all
// written in the inputs' layout: dq, dk, dv [B,T,H,D], dg, d_beta [B,T,H] (MN = B*H*ceil(T/64)).
// q, k and v fp32, or all three bf16 (the bf16 forward's inputs, read as they are), per chunk [B,H,N,64,D]
// with any strides that keep each row contiguous and on the lanes' vectors (multiples of D / 32 elements):
// a per-chunk copy (rows past T zero) or a view of the time-major inputs (T a multiple of 64); dq, dk and
// dv fp32, or all three bf16 (rounded once as they are written: bf16 leaves); the rest fp32.
struct GdnBackwardRows {
  at::Tensor q, k, v;                                                                     // [B,H,N,64,D]
  at::Tensor d_q_decayed, d_k_in, d_k_decayed, d_v_in, dq_products, dk_products;          // [MN,64,D]
  at::Tensor g, beta, d_beta_a, dg_decay;                                                 // [MN,64]
  at::Tensor chunk_decay, d_chunk_decay;                                                  // [MN]
  at::Tensor dq, dk, dv, dg, d_beta;                                                      // time-major
};
void launch_gdn_backward_rows(const GdnBackwardRows& rows);
// dg and d_beta [B,T,H] (time-major, fp32) from the row dots of the products that form dq, dk and dv where
// those products take the rows kernel's work (chunk_gemm's row scales and dots): q_dots = dO S^T . q,
// k_in_dots = T^T dW . k, k_decayed_dots = U G^T . k, v_dots = T^T dU . v, each [MN, tiles, 64] fp32 (a row's
// dot in parts over 64 columns, summed in order), with the gates' d_beta_a and dg_decay and the chunk decays'
// part as launch_gdn_backward_rows takes them: the same dg and d_beta.
struct GdnBackwardGateGrads {
  at::Tensor q_dots, k_in_dots, k_decayed_dots, v_dots;  // [MN, tiles, 64]
  at::Tensor g, beta, d_beta_a, dg_decay;                // [MN,64]
  at::Tensor chunk_decay, d_chunk_decay;                 // [MN]
  at::Tensor dg, d_beta;                                 // [B,T,H]
};
void launch_gdn_backward_gate_grads(const GdnBackwardGateGrads& gates);
// out [MN] = sum over each chunk's [D][D] of states * grads (states, grads [MN, D, D], D*D a
// multiple of 4; states fp32 or bf16): the chunk decays' gradient.
void launch_gdn_backward_state_dot(const at::Tensor& states, const at::Tensor& grads, const at::Tensor& out);
// T [MN,64,64] = (I + A)^-1 with A = strictly-lower(beta_i kk_ij e^{Gamma_i - Gamma_j}) formed from kk
// [MN,64,64] (K K^T per chunk), g and beta [MN,64] (rows past T zero), Gamma the gates' float64 prefix
// sums per chunk: the backward's T where the forward did not keep it (the bf16 forward), in one kernel
// instead of the decay matrix, A and unit_lower_inverse. 16-byte aligned contiguous kk (fp32) and T: fp32,
// or bf16 for a T that only bf16 products read (the inverse's off-diagonal blocks then on TF32 MMAs, as
// the bf16 forward forms them; T rounded to nearest even, as those products would round it).
void launch_gdn_backward_inverse(const at::Tensor& kk, const at::Tensor& g, const at::Tensor& beta,
                                 const at::Tensor& T);
// The same with K K^T formed in the kernel from k's bf16 rows [B,H,N,64,D] (gdn_backward_key_rows_apply with q = k;
// B H N = MN), as launch_gdn_backward_gates_from_rows forms it.
void launch_gdn_backward_inverse_from_rows(const at::Tensor& k, const at::Tensor& g, const at::Tensor& beta,
                                           const at::Tensor& T);
// The value side of the backward with bf16 products (gdn_backward_value_kernels.cu), one block per chunk: from
// d_u [MN,64,D] (dU_n, the fused reverse walk's), states [MN,D,D] (S_n, the state entering each chunk), T
// [MN,64,64] and the chunk's rows of v and k ([B,H,N,64,D] as gdn_backward_key_rows_apply takes them; B H N =
// MN), all bf16, and beta, e_gamma [MN,64] fp32 (beta and e^Gamma per chunk):
//   d_w = -dU S^T  [MN,64,D] bf16,
//   d_inverse = dU (diag(beta) V)^T + d_w (diag(beta e^Gamma) K)^T  [MN,64,64] bf16,
//   dv = diag(beta) T^T dU  (a [B,H,N,64,D] view of the gradient, bf16 or fp32, rows on 16 bytes),
//   v_dots [MN, D / 64 rounded up, 64] fp32 = each row's dot of T^T dU with v over each 64 columns.
// The three bf16 chunk_gemm products they replace (dW; dT's sum; dV's term of the chain rule's sums) with dU
// read once: the same MMAs over the depth in the same order and chunk_gemm's epilogues, so d_w, d_inverse, dv
// and v_dots are those products' bits. Contiguous operands on 16 bytes.
struct GdnBackwardValue {
  at::Tensor d_u, states, inverse, v, k, beta, e_gamma;
  at::Tensor d_w, d_inverse, dv, v_dots;
};
// Whether launch_gdn_backward_value takes these operands: bf16 CUDA d_u [MN,64,D] and states [MN,D,D],
// contiguous and on 16 bytes, with v and k rows as gdn_backward_key_rows_apply takes them (D 32, 64 or 128).
bool gdn_backward_value_apply(const at::Tensor& d_u, const at::Tensor& states, const at::Tensor& v,
                              const at::Tensor& k);
void launch_gdn_backward_value(const GdnBackwardValue& value);
// dq and dk of the backward with bf16 products (gdn_backward_query_key_kernels.cu), one block per chunk for each:
//   dq = d_qk K + diag(e_gamma) dO S^T,
//   dk = d_qk^T Q + d_kk^T K + diag(k_scale) T^T dW + diag(to_end) U G^T,
// and the row dots dg and dbeta take: q_dots = dO S^T . q, k_in_dots = T^T dW . k, k_decayed_dots = U G^T . k, each
// [MN, D / 64 rounded up, 64] fp32 over each 64 columns. From q, k and d_o rows ([B,H,N,64,D] as
// gdn_backward_key_rows_apply takes them; B H N = MN), d_qk, d_kk (the gates kernel's) and inverse (T) [MN,64,64],
// states (S_n) and grads_after (G_n) [MN,D,D], u (U_n) and d_w [MN,64,D], all bf16 contiguous on 16 bytes, and
// e_gamma (e^Gamma), k_scale (beta e^Gamma), to_end (e^{Gamma_C - Gamma}) [MN,64] fp32; dq and dk are [B,H,N,64,D]
// views of the gradients, both bf16 or both fp32, rows on 16 bytes. The two chunk_gemm sums of the chain rule they
// replace, each operand read once: the same MMAs over the depth in the same order, the terms in the same order
// and chunk_gemm's epilogue, so those sums' bits.
struct GdnBackwardQueryKey {
  at::Tensor q, k, d_o, d_qk, d_kk, inverse, states, grads_after, u, d_w;
  at::Tensor e_gamma, k_scale, to_end;
  at::Tensor dq, dk, q_dots, k_in_dots, k_decayed_dots;
};
// Whether launch_gdn_backward_query_key takes these operands (the outputs are checked by the launch).
bool gdn_backward_query_key_apply(const GdnBackwardQueryKey& operands);
void launch_gdn_backward_query_key(const GdnBackwardQueryKey& x);

// The fused reverse walk of the backward on the bf16 forward's results (gdn_backward_bf16_walk_kernels.cu):
// per batch and head, from the last chunk to the first, with G the gradient
// reaching the state after chunk n (d_final after the last),
//   grads_after[n] = G,  dU_n = P^T dO_n + diag(e^{Gamma_C - Gamma}) K_n G  (P the decayed causal scores),
//   G <- e^{Gamma_C} G + Q_n^T diag(e^Gamma) dO_n - W_n^T dU_n,
// every product on bf16 operands (G, P, diag(e^Gamma) dO and dU rounded), fp32 accumulation.
// q, k, d_out [B,T,H,D] bf16 with D in {32, 64, 128}; w [M,N,64,D] bf16 (the forward's W); gamma
// [M,N,64] float64 (each chunk's prefix sums of the gates, rows past T constant); d_final [M,D,D] or
// undefined (zeros); starts as launch_chunk_scan's (nothing flows back past a flagged chunk); states
// [M,N,D,D] bf16, the state entering each chunk (the forward's). Writes d_chunk_decay [M,N] fp32, the
// chunk decays' gradient sum(states[n] o G) with G in fp32 (what launch_gdn_backward_state_dot gives on
// fp32 G_n), d_initial [M,D,D] fp32, and grads_after [M,N,D,D] and d_u [M,N,64,D] in bf16 (rounded to
// nearest even: the backward reads them only as bf16 products' operands).
struct GdnBackwardWalkBf16 {
  at::Tensor q, k, d_out, w, gamma, d_final, starts, states;
  at::Tensor grads_after, d_u, d_initial, d_chunk_decay;
};
void launch_gdn_backward_walk_bf16(const GdnBackwardWalkBf16& walk);
// Whether that walk's block for head dim D fits device `device`'s shared memory (197 KB at D = 128).
bool gdn_backward_walk_bf16_fits_device(int64_t head_dim, int device);

// The bf16 fused forward's scratch: w, u [M,N,64,D] bf16 (U', then the split walk's U_n), and
// either gamma [M,N,64] float64 (the fused walk: each chunk's prefix sums of the gates) or
// k_decayed [M,N,64,D] bf16, decay [M,N] fp32 and states [M,N,D,D] bf16 (the split walk: K_d,
// e^{G_end} and the state entering each chunk).
// walk_wgmma: the fused walk on the warpgroup MMAs (gdn_forward_bf16_walk_wgmma_runs). split_inverse:
// W's and U''s products take (I + A)^-1 split into bf16 hi + lo (two MMAs per step) instead of rounded
// to bf16 (training: its saved W and U' then carry the inverse's rounding no more).
struct GdnForwardBf16Scratch {
  at::Tensor w, u, gamma, k_decayed, decay, states;
  at::Tensor inverse;  // [M,N,64,64] bf16 or undefined: each chunk's T rounded to bf16 (with split_inverse only)
  bool walk_wgmma = false;
  bool split_inverse = false;
};

// The bf16 fused forward (gdn_forward_bf16_kernels.cu): prep, then the fused walk (one kernel:
// gamma defined) or the split walk (scan and output). q, k, v, o [B,T,H,D] bf16 with D in
// {32, 64, 128}; g, beta [B,T,H] fp32; initial [M,D,D] fp32 or undefined (zeros); starts [N] bool
// or undefined (as launch_chunk_scan's). Results: o and final_state [M,D,D] fp32.
void launch_gdn_forward_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                             const at::Tensor& beta, const at::Tensor& initial, const at::Tensor& starts,
                             const GdnForwardBf16Scratch& scratch, const at::Tensor& final_state,
                             const at::Tensor& o);

// Whether the fused walk's block for head dim D (32, 64 or 128) fits device `device`'s shared
// memory (200 KB at D = 128: an H100/H200 has 227 KB per block, an A100 163 KB).
bool gdn_forward_bf16_walk_fits_device(int64_t head_dim, int device);
// Whether the fused walk is the faster one for batch * heads = M: it fits and its M blocks (one
// per batch and head) fill at least 60% of the SMs. Measured on an H100 (132 SMs) at D = 128: M =
// 96 and 128 fused 1.23x and 1.30x faster than split; M = 32 and 64 split 1.3x and 1.1x faster
// (the split scan's blocks, one per 64 value columns, are twice as many). At D = 64 measured at M =
// 256 only (fused 1.28x); at D <= 64 the split scan has one block per head too, so the rule is
// conservative there. Packed documents' segment slots are not counted.
bool gdn_forward_bf16_walk_preferred(int64_t batch_heads, int64_t head_dim, int device);
// Whether the fused walk can run on the warpgroup MMAs (gdn_forward_bf16_walk_wgmma_kernels.cu):
// head dim 128, a Hopper GPU running this build's sm_90a code (wgmma_runs_on), its block fitting.
bool gdn_forward_bf16_walk_wgmma_runs(int64_t head_dim, const at::Device& device);

}  // namespace prime::kernels::detail
