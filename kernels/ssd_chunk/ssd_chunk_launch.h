// Launchers of kernels/ssd_chunk (defined in ssd_chunk_kernels.cu; called only by ssd_chunk.cpp
// in CUDA builds). Time-major operands ([B,T,H,K]) are read through their strides (expanded
// heads with stride 0 included); the buffers the op allocates are contiguous. Chunks are 64
// steps; a chunk's steps past T count as delta = 0 (no decay, no input). The launchers check
// shapes, dtypes and the launch.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

constexpr int64_t kSsdChunk = 64;    // steps per chunk in the kernels
constexpr int64_t kSsdMaxDim = 128;  // largest P and N

// Which per-step factor weighs a chunk's rows (Gamma chunk-local, Gamma_end its last value).
enum class SsdRowFactor { ToEnd, FromStart };  // e^{Gamma_end - Gamma_t}, e^{Gamma_t}

// Per (batch, head, chunk n): out[bh, n] [P, N] = sum_t u_t^T f_t v_t (u [B,T,H,P], v [B,T,H,N]),
// f_t = delta_t e^{Gamma_end - Gamma_t} for ToEnd (the chunk's end state from zero when u = x,
// v = Bm), e^{Gamma_t} for FromStart (the gradient of the chunk's start state when u = dy,
// v = Cm). decay [B*H, nC] (or undefined) receives e^{Gamma_end}.
void launch_ssd_chunk_states(const at::Tensor& u, const at::Tensor& v, const at::Tensor& delta,
                             const at::Tensor& A, SsdRowFactor factor, const at::Tensor& out,
                             const at::Tensor& decay);

// In place over buffer [M, nC, P*N] (M = B*H), walking n = 0..nC-1 (or backwards):
//   value = buffer[n]; buffer[n] = s; s = decay[m, n] s + value
// from s = initial [M, P*N] (zeros if undefined); final [M, P*N] receives the last s. Forwards
// it turns the chunks' local end states into the states entering each chunk; backwards it
// turns the gradients of the start states into those of the local end states. restart [nC]
// bool (or undefined), shared by the M rows: a chunk flagged true starts from a zero state
// (forwards s = 0 before buffer[n] = s; backwards s = 0 after the step, so no gradient flows
// back past it).
void launch_ssd_state_scan(const at::Tensor& buffer, const at::Tensor& decay, const at::Tensor& initial,
                           const at::Tensor& restart, bool reverse, const at::Tensor& final_state);

// The in-chunk product every output and input gradient has the shape of. Per (b, h, chunk,
// 64-column tile), rows r and columns c of the chunk:
//   M[r][k] = (fa_t . fb_j) e^{Gamma_t - Gamma_j} for j <= t, (t, j) = (r, k), or (k, r) if
//             transpose; fb's rows times delta when fb_delta
//   R[r][c] = sum_k M[r][k] u'[k][c] + f_r sum_i v[r][i] S[c][i]
// u' = u (times delta per row when u_delta), v = fb (scaled as above) when v_is_fb else fa,
// S the chunk's [P,N] state slice of `state` ([B*H, nC, P, N]) with c along P (c along N and
// i along P when state_transposed), f the row factor. out [B,T,H,cols] = R (times delta per row
// when out_delta). Optional per-row partial sums over the tile's columns, each
// [tiles, B, H, nC*64]: full = sum_c aux[r][c] R[r][c], state = sum_c aux[r][c] (R - the M part),
// pair = (only with transpose, u = dy, aux = x) sum_j m[r][j] - sum_t m[t][r] with
// m[t][j] = M[j][t] delta_j sum_c u[t][c] aux[j][c] for j < t.
struct SsdMixOperands {
  at::Tensor fa, fb, u, aux, state;  // aux may be undefined
  bool fb_delta = false, transpose = false, u_delta = false, v_is_fb = false;
  bool state_transposed = false, out_delta = false;
  SsdRowFactor factor = SsdRowFactor::FromStart;
  at::Tensor out, partial_full, partial_state, partial_pair;  // partials may be undefined
};
void launch_ssd_chunk_mix(const SsdMixOperands& operands, const at::Tensor& delta,
                          const at::Tensor& A);

// dC and dB of the backward in one launch per chunk, where the tensor-core kernels serve (P and
// N multiples of 16) and the block's shared memory fits the device (ssd_chunk_grad_bc_fused_apply):
// the same results as the two launch_ssd_chunk_mix calls they replace (ssd_chunk.cpp), computing
// their common chunk matrix M = (dy (delta x)^T) o L once:
//   dC = M B + diag(e^Gamma) dy start,   dB = M^T C + diag(e^{Gamma_end - Gamma}) (delta x) dlocal
// partial_state [tiles(N), B, H, nC*64] = sum_c C[t][c] (diag(e^Gamma) dy start)[t][c], and
// d_decay [B*H, nC] = <dlocal_n, start_n> (the gradient of the chunk's decay e^{Gamma_end}).
// starts, d_local [B*H, nC, P, N]; dy, x [B,T,H,P] and Bm, Cm [B,T,H,N] through their strides;
// dB, dC contiguous [B,T,H,N].
struct SsdGradBcOperands {
  at::Tensor dy, x, Bm, Cm, starts, d_local;
  at::Tensor dB, dC, partial_state, d_decay;
};
bool ssd_chunk_grad_bc_fused_apply(int64_t P, int64_t N);
void launch_ssd_chunk_grad_bc(const SsdGradBcOperands& operands, const at::Tensor& delta, const at::Tensor& A);

// The forward on bf16 operands (ssd_forward_bf16_kernels.cu; no autograd): x, Bm, Cm bf16
// contiguous [B,T,H,D] with P = N = D in {32, 64, 128}, 16-byte aligned; delta fp32 [B,T,H] (any
// strides), A fp32 [H] contiguous; initial fp32 [B*H, D, D] contiguous (32-byte aligned) or
// undefined (zeros); restart [nC] bool or undefined, as launch_ssd_state_scan's. Two launches:
// the walk over chunks (the state [P, N] carried in fp32, states [B*H, nC, D, D] bf16 receiving
// the state entering each chunk, final_state fp32 [B*H, D, D] the last) and the per-chunk output
// y [B,T,H,D] contiguous, fp32 or bf16. Products on bf16 tensor cores with fp32 accumulation.
void launch_ssd_forward_bf16(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                             const at::Tensor& Cm, const at::Tensor& initial, const at::Tensor& restart,
                             const at::Tensor& states, const at::Tensor& final_state, const at::Tensor& y);

// The walk of launch_ssd_forward_bf16 alone, with u in x's place and v in Bm's (u, v bf16
// contiguous [B,T,H,D], the rest as there): states [B*H, nC, D, D] bf16 receives the state
// entering each chunk, S = e^{Gamma_end} S + sum_t f_t u_t v_t^T with f_t = delta_t
// e^{Gamma_end - Gamma_t}, or f_t = e^{Gamma_end - Gamma_t} when delta_scales_inputs is false (delta
// the decay alone: gated linear attention's states); final_state fp32 [B*H, D, D] the last. GKA's
// bf16 forward takes H's walk (u = v = k) and S^T's (u = v, v = k) from it.
void launch_ssd_walk_bf16(const at::Tensor& u, const at::Tensor& v, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& initial, const at::Tensor& restart, const at::Tensor& states,
                          const at::Tensor& final_state, bool delta_scales_inputs);

// The backward of launch_ssd_forward_bf16 (ssd_backward_bf16_kernels.cu): x, Bm, Cm, dy bf16
// contiguous [B,T,H,D] (16-byte aligned), delta, A and restart as the forward's, states the
// forward's [B*H, nC, D, D] bf16, d_final fp32 [B*H, D, D] contiguous or undefined (zeros). Two
// launches: the walk backwards (d_locals [B*H, nC, D, D] bf16 receiving the gradient of the state
// leaving each chunk, d_state fp32 [B*H, D, D] the initial state's) and the per-chunk gradients:
// dx, dB, dC [B,T,H,D] contiguous (all fp32 or all bf16), d_delta fp32 [B,T,H] contiguous and
// dA_part fp32 [B*H, nC] (each chunk's share of dA, to be summed over batch and chunks).
struct SsdBackwardBf16Operands {
  at::Tensor x, delta, A, Bm, Cm, dy, states, d_final, restart;
  at::Tensor d_locals, d_state, dx, dB, dC, d_delta, dA_part;
};
void launch_ssd_backward_bf16(const SsdBackwardBf16Operands& operands);

}  // namespace prime::kernels::detail
