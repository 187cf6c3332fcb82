// The chunked parallel form of GKA (training and prefill).
//
// Both states are linear recurrences driven by k alone, so the state at every chunk start
// is found first by a cheap scan over chunks; then every position of every chunk solves in
// parallel. Inside a chunk (positions t, j = 0..C-1, G_t = sum of the log decays up to t
// within the chunk, w_tj = e^{G_t - G_j} for j <= t, H_0 / S_0 the chunk-start states):
//   H_t x   = e^{G_t} H_0 x + sum_j w_tj k_j (k_j . x)                       ([C,C] matmuls)
//   ||H_t||^2 = e^{2G_t} ||H_0||^2 + 2 e^{G_t} sum_j w_tj k_j^T H_0 k_j
//             + sum_{i,j} w_ti w_tj (k_i . k_j)^2
//   o_t     = scale (e^{G_t} S_0^T q~_t + sum_j w_tj (k_j . q~_t) v_j)
// Every term of ||H_t||^2 is non-negative (H_0 is PSD), so it has no cancellation in fp32.
// w_tj comes from a segment sum of the log decays g_{j+1..t}, never from a difference of two
// cumulative sums (which loses |G| * 2^-24 absolutely) nor from a ratio of exponentials.
#include <algorithm>
#include <cstdint>
#include <iterator>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/gka_solve/gka_forward_bf16.h"
#include "model/gka_core.h"
#include "model/ssm_chunks.h"
#include "util/error.h"

namespace prime::model::gka_detail {

namespace {

// Log decays of one state, chunked: per position the decay since the chunk start (e^{G_t})
// and the intra-chunk weights w_tj (zero above the diagonal).
struct ChunkDecay {
  at::Tensor from_start;  // e^{G_t}          [B,H,n,C]
  at::Tensor weights;     // e^{G_t - G_j}     [B,H,n,C,C], lower triangle incl. diagonal
  at::Tensor to_end;      // e^{G_{C-1} - G_j} [B,H,n,C] (the last row of weights)
  at::Tensor whole;       // e^{G_{C-1}}       [B,H,n]
};

// g [B,H,n,C] or undefined (no decay: every factor is 1).
ChunkDecay chunk_decay(const at::Tensor& g, const at::Tensor& like, int64_t chunk) {
  const auto options = like.options();
  ChunkDecay out;
  if (!g.defined()) {
    const at::Tensor lower = at::ones({chunk, chunk}, options.dtype(at::kBool)).tril();
    const auto sizes = like.sizes();  // [B,H,n,C,D]
    out.from_start = at::ones({sizes[0], sizes[1], sizes[2], chunk}, options);
    out.weights = lower.to(like.scalar_type()).expand({sizes[0], sizes[1], sizes[2], chunk, chunk});
    out.to_end = out.from_start;
    out.whole = at::ones({sizes[0], sizes[1], sizes[2]}, options);
    return out;
  }
  const at::Tensor cumulative = at::cumsum(g, -1);
  out.from_start = at::exp(cumulative);
  out.whole = at::exp(cumulative.select(-1, chunk - 1));
  out.weights = chunks::segment_decay(g);
  out.to_end = out.weights.select(-2, chunk - 1);
  return out;
}

bool is_reduced(const at::Tensor& x) {
  return x.defined() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
}

// x in fp32 where it is bf16 or fp16, else x itself.
at::Tensor widened(const at::Tensor& x) { return is_reduced(x) ? x.to(at::kFloat) : x; }

}  // namespace

ChunkedResult chunked_core(const GkaMixer::Prepared& in, const at::Tensor& kk_state,
                           const at::Tensor& kv_state, int64_t chunk_size,
                           const SolveOptions& options, const at::Tensor& chunk_starts) {
  const int64_t T = in.q.size(1);
  PRIME_CHECK(T > 0 && chunk_size > 0);
  // Without a gradient to record, under PRIME_SSM_CORE=bf16 (or on bf16 operands), the whole form
  // runs on kernels/gka_solve's bf16 forward.
  if ((in.q.scalar_type() == at::kBFloat16 || kernels::bf16_ssm_core()) &&
      kernels::gka_forward_bf16_apply(in.q, in.k, in.v, in.log_decay_kk, in.log_decay_kv, in.alpha, kk_state, kv_state,
                                      chunk_size, chunk_starts, options.num_iter)) {
    kernels::GkaForwardBf16 out =
        kernels::gka_forward_bf16(in.q, in.k, in.v, in.log_decay_kv, in.alpha, kk_state, kv_state, chunk_starts,
                                  options.ridge_strength, options.num_iter, options.output_scale);
    return {out.o, out.kk_state, out.kv_state};
  }
  // bf16 or fp16 operands the bf16 forward does not take (a gradient to record, a shape or device it
  // does not serve) run the fp32 form on fp32 copies, o returned in q's dtype and the states in fp32
  // (as that forward returns them): the solve amplifies rounding up to 1 / r = 50x (gka.h), so its
  // products are not left in 16-bit types.
  const at::Tensor* operands[] = {&in.q, &in.k, &in.v, &in.alpha, &in.log_decay_kv, &in.log_decay_kk, &kk_state,
                                  &kv_state};
  if (std::any_of(std::begin(operands), std::end(operands), [](const at::Tensor* x) { return is_reduced(*x); })) {
    GkaMixer::Prepared wide = in;
    for (at::Tensor* x : {&wide.q, &wide.k, &wide.v, &wide.alpha, &wide.log_decay_kv}) *x = widened(*x);
    // One decay for both states stays one tensor (the form computes it once).
    wide.log_decay_kk = in.log_decay_kk.is_same(in.log_decay_kv) ? wide.log_decay_kv : widened(in.log_decay_kk);
    ChunkedResult result =
        chunked_core(wide, widened(kk_state), widened(kv_state), chunk_size, options, chunk_starts);
    result.o = result.o.to(in.q.scalar_type());
    return result;
  }
  // A chunk longer than the sequence only costs padding.
  const int64_t C = chunk_starts.defined() ? chunk_size : std::min(chunk_size, T);
  PRIME_CHECK(!chunk_starts.defined() || (T % C == 0 && chunk_starts.dim() == 1 && chunk_starts.size(0) == T / C &&
                                          chunk_starts.scalar_type() == at::kBool),
              "GKA chunked form: chunk_starts must be [", T / C, "] bool for ", T, " tokens in chunks of ", C);
  const at::Tensor keep = chunk_starts.defined() ? chunk_starts.logical_not().to(in.q.scalar_type()) : at::Tensor();
  const at::Tensor Q = chunks::split(in.q, C);  // [B,H,n,C,D]
  const at::Tensor K = chunks::split(in.k, C);
  const at::Tensor V = chunks::split(in.v, C);
  const at::Tensor Kt = K.transpose(-1, -2);
  const ChunkDecay decay_kv =
      chunk_decay(in.log_decay_kv.defined() ? chunks::split(in.log_decay_kv, C) : at::Tensor(), K, C);

  ChunkedResult result;
  at::Tensor Q_tilde = Q;
  if (options.num_iter > 0) {
    PRIME_CHECK(kk_state.defined(), "GKA chunked form needs an H state when solving");
    const bool shared_decay = in.log_decay_kk.defined() && in.log_decay_kk.is_same(in.log_decay_kv);
    const ChunkDecay decay_kk =
        shared_decay ? decay_kv
                     : chunk_decay(in.log_decay_kk.defined() ? chunks::split(in.log_decay_kk, C)
                                                             : at::Tensor(),
                                   K, C);
    // Chunk-start H for every chunk, then the final H.
    const at::Tensor contribution = at::matmul(Kt * decay_kk.to_end.unsqueeze(-2), K);
    const auto H_scan = chunks::state_scan(kk_state, contribution, decay_kk.whole, keep);
    const at::Tensor& H0 = H_scan.first;  // [B,H,n,D,D]
    result.kk_state = H_scan.second;

    const at::Tensor& W = decay_kk.weights;                  // [B,H,n,C,C]
    const at::Tensor e_start = decay_kk.from_start.unsqueeze(-1);  // [B,H,n,C,1]
    // ||H_t||_F^2, all parts non-negative.
    const at::Tensor gram = at::matmul(K, Kt);               // k_i . k_j
    const at::Tensor H0_norm2 = H0.pow(2).sum({-2, -1}).unsqueeze(-1).unsqueeze(-1);  // [B,H,n,1,1]
    const at::Tensor kHk = (at::matmul(K, H0) * K).sum(-1, /*keepdim=*/true);   // [B,H,n,C,1]
    const at::Tensor cross = at::matmul(W, kHk);                                // [B,H,n,C,1]
    const at::Tensor intra = (at::matmul(W, gram.pow(2)) * W).sum(-1, /*keepdim=*/true);
    const at::Tensor frob_square =
        e_start.pow(2) * H0_norm2 + 2.0 * e_start * cross + intra;
    const at::Tensor frob = frobenius_from_square(frob_square, options.bp_lambda);  // [..,C,1]

    const ChunkSystem system{K, H0, W, e_start};
    const at::Tensor X = chunk_solve(Q, system, frob, options.ridge_strength, options.num_iter);
    Q_tilde = alpha_mix(Q, X, in.alpha.defined() ? chunks::split(in.alpha, C) : at::Tensor());
  }

  // Gated linear attention on q~.
  const at::Tensor contribution_kv = at::matmul(Kt * decay_kv.to_end.unsqueeze(-2), V);
  const auto S_scan = chunks::state_scan(kv_state, contribution_kv, decay_kv.whole, keep);
  const at::Tensor& S0 = S_scan.first;
  result.kv_state = S_scan.second;
  const at::Tensor o_chunks =
      (decay_kv.from_start.unsqueeze(-1) * at::matmul(Q_tilde, S0) +
       at::matmul(decay_kv.weights * at::matmul(Q_tilde, Kt), V)) *
      options.output_scale;
  result.o = chunks::merge(o_chunks, T);
  return result;
}

at::Tensor chunked_varlen(const GkaMixer::Prepared& in, const DocumentChunks& layout, int64_t chunk_size,
                          const SolveOptions& options) {
  const int64_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), D = in.q.size(3);
  PRIME_CHECK(layout.scatter.size(0) == B * T && layout.gather.size(0) == layout.count * chunk_size,
              "GKA packed documents: a chunk layout of ", layout.gather.size(0), " slots for ", B, " x ", T,
              " tokens in chunks of ", chunk_size);
  const auto to_chunks = [&](const at::Tensor& x) { return to_document_chunks(x, layout); };
  GkaMixer::Prepared packed;
  packed.q = to_chunks(in.q);
  packed.k = to_chunks(in.k);
  packed.v = to_chunks(in.v);
  packed.alpha = to_chunks(in.alpha);
  packed.log_decay_kv = to_chunks(in.log_decay_kv);
  // One decay for both states stays one tensor (chunked_core computes it once).
  packed.log_decay_kk = in.log_decay_kk.defined() && in.log_decay_kk.is_same(in.log_decay_kv)
                            ? packed.log_decay_kv
                            : to_chunks(in.log_decay_kk);
  const at::Tensor zero = at::zeros({1, H, D, D}, in.q.options().requires_grad(false));
  const ChunkedResult result = chunked_core(packed, options.num_iter > 0 ? zero : at::Tensor(), zero, chunk_size,
                                            options, layout.starts);
  return from_document_chunks(result.o, layout, B, T);
}

}  // namespace prime::model::gka_detail
