// Internals of the GKA mixer shared by gka.cpp (recurrent and step forms) and gka_chunked.cpp
// (chunked form): the prepared per-token inputs, the Chebyshev iteration and the state cores.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "model/documents.h"
#include "model/gka.h"

namespace prime::model {

// Per-token inputs of the GKA state recurrence, [B, T, H, ...] in the compute dtype.
struct GkaMixer::Prepared {
  at::Tensor q, k, v;       // [B,T,H,D]: q, k L2-normalised; k, v scaled by (beta + 1e-6)
  at::Tensor alpha;         // [B,T,H]; undefined: alpha = 1
  at::Tensor log_decay_kv;  // [B,T,H] log decay of S; undefined: no decay
  at::Tensor log_decay_kk;  // [B,T,H] log decay of H; undefined: no decay
  at::Tensor gate;          // [B,T,H,D] output gate pre-activation; undefined: no gate
};

namespace gka_detail {

struct SolveOptions {
  double ridge_strength = 0.02;
  int num_iter = 30;  // 0: no solve, q~ = q
  bool bp_lambda = true;
  double output_scale = 1.0;  // D^-1/2 with gla_rescale
};

// ||H||_F from ||H||_F^2 (which the chunked form assembles from parts, so it may come out a
// hair below 0 or exactly 0): floored at 1e-15 so eta = 2/(2 lambda + f) stays finite, and
// with a zero gradient where floored. Detached unless bp_lambda.
inline at::Tensor frobenius_from_square(const at::Tensor& square, bool bp_lambda) {
  at::Tensor frob = at::sqrt(at::clamp_min(square, 1e-30));
  return bp_lambda ? frob : frob.detach();
}

// Chebyshev iteration of design/ssm-layers.md step 6 for (H + lambda I) x = q on the spectrum
// [lambda, lambda + f], lambda = r f. apply_H(x) returns H x for x shaped like q; frob is f,
// broadcastable against q (trailing dim 1). Since lambda is proportional to f, c and hence the
// omega sequence are the same scalars for every position; only eta and lambda vary.
// `iterates` (optional) receives the x each iteration starts from, for a backward pass.
template <typename ApplyH>
at::Tensor chebyshev_iterate(const ApplyH& apply_H, const at::Tensor& q, const at::Tensor& frob,
                             double ridge_strength, int num_iter,
                             std::vector<at::Tensor>* iterates = nullptr) {
  const at::Tensor lambda = frob * ridge_strength;
  const at::Tensor eta = 2.0 / (2.0 * lambda + frob);
  const double spread = 1.0 / (2.0 * (2.0 * ridge_strength + 1.0));  // f / (2 (2 lambda + f))
  const double c = spread * spread;
  const at::Tensor eta_q = eta * q;
  const at::Tensor one_minus_eta_lambda = 1.0 - eta * lambda;  // per position, small
  at::Tensor x = eta_q;
  at::Tensor x_prev;  // undefined: zero, the first step has no momentum term
  double omega = 2.0;
  for (int iteration = 0; iteration < num_iter; ++iteration) {
    omega = 1.0 / (1.0 - c * omega);
    if (iterates) iterates->push_back(x);
    // x' = omega (x - eta ((H + lambda) x - q)) + (1 - omega) x_prev, regrouped as
    //    = [omega eta q + (1 - omega) x_prev] + omega (1 - eta lambda) x - omega eta H x
    // so that each full-size tensor is touched by one fused op (lerp / addcmul) instead of ~8.
    const at::Tensor base = x_prev.defined() ? at::lerp(x_prev, eta_q, omega) : eta_q * omega;
    x_prev = x;
    x = at::addcmul(at::addcmul(base, one_minus_eta_lambda * omega, x), eta * omega, apply_H(x), -1.0);
  }
  return x;
}

// The systems H_t of every position of every chunk, as the chunked form applies them:
// H_t x = e^{G_t} H_0 x + sum_{j<=t} w_tj k_j (k_j . x).
struct ChunkSystem {
  at::Tensor keys;        // k_j        [B,H,n,C,D]
  at::Tensor start;       // H_0        [B,H,n,D,D], the chunk-start states (symmetric)
  at::Tensor weights;     // w_tj       [B,H,n,C,C], zero above the diagonal
  at::Tensor from_start;  // e^{G_t}    [B,H,n,C,1]
};

// chebyshev_iterate over a ChunkSystem (q [B,H,n,C,D], frob [B,H,n,C,1]) as one autograd node
// (gka_solve.cpp): saves only its inputs and recomputes the iterates in backward, giving the
// gradient of the unrolled iteration to rounding. num_iter > 0.
at::Tensor chunk_solve(const at::Tensor& q, const ChunkSystem& system, const at::Tensor& frob,
                       double ridge_strength, int num_iter);
// The same function left to autograd (keeps every iterate): the reference for checks.
at::Tensor chunk_solve_unrolled(const at::Tensor& q, const ChunkSystem& system,
                                const at::Tensor& frob, double ridge_strength, int num_iter);

// q~ = q + alpha (x - q), alpha undefined meaning 1. Shapes [..., H, D] and [..., H].
inline at::Tensor alpha_mix(const at::Tensor& q, const at::Tensor& x, const at::Tensor& alpha) {
  if (!alpha.defined()) return x;
  return q + alpha.unsqueeze(-1) * (x - q);
}

// One token (index t of `in`) of the recurrence: updates kk_state (if num_iter > 0) and
// kv_state [B,H,D,D] out of place and returns o [B,H,D] before the output norm.
at::Tensor recurrent_step(const GkaMixer::Prepared& in, int64_t t, at::Tensor& kk_state,
                          at::Tensor& kv_state, const SolveOptions& options);

// One decode step (token 0 of `in`) with the states kk_state (undefined when num_iter == 0) and kv_state
// [B,H,D,D] updated in place, in their own dtype: the fused kernel (kernels/ssm_decode) where
// kernels::gka_decode_apply serves, else recurrent_step on the states cast to the solve dtype (q's) and
// stored back. Returns o [B,H,D] before the output norm. What GkaMixer::step and the decode-step benchmark
// run.
at::Tensor step_in_place(const GkaMixer::Prepared& in, at::Tensor& kk_state, at::Tensor& kv_state,
                         const SolveOptions& options);

struct ChunkedResult {
  at::Tensor o;         // [B,T,H,D] before the output norm
  at::Tensor kk_state;  // final H [B,H,D,D] (undefined if num_iter == 0)
  at::Tensor kv_state;  // final S [B,H,D,D]
};

// The chunked parallel form over all T tokens of `in`, starting from kk_state / kv_state
// (kk_state may be undefined when num_iter == 0). Differentiable: no in-place ops. fp32 or float64
// operands; bf16 or fp16 ones go to kernels/gka_solve's bf16 forward where it applies, else through
// fp32 copies (o in q's dtype, the states fp32). With
// chunk_starts ([T / chunk_size] bool, T a multiple of chunk_size), both states restart from
// zero at every chunk marked (packed documents; the final states are then those of the last
// document).
ChunkedResult chunked_core(const GkaMixer::Prepared& in, const at::Tensor& kk_state,
                           const at::Tensor& kv_state, int64_t chunk_size,
                           const SolveOptions& options, const at::Tensor& chunk_starts = at::Tensor());

// Packed documents: `in` [B, T, ...] (B*T tokens, documents.h's layout), each document run from
// zero states on its own chunks (`layout`, for chunk_size) all at once; o [B, T, H, D] before the
// output norm.
at::Tensor chunked_varlen(const GkaMixer::Prepared& in, const DocumentChunks& layout, int64_t chunk_size,
                          const SolveOptions& options);

}  // namespace gka_detail
}  // namespace prime::model
