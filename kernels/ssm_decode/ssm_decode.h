// Fused single-token decode steps of the recurrent SSM cores, updating the cache's state in
// place: GDN's gated delta rule, Mamba-2's SSD, GKA's state updates and Chebyshev solve. Decode is
// bound by memory traffic, and its floor is reading the state once and writing it once; the
// torch in-place steps (lib/model) read it three times and write it twice (GDN), or twice and
// twice (Mamba-2); GKA's torch step reads H once per solve iteration. One kernel each, launched
// on the current stream with no host synchronisation (capturable in a CUDA graph).
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// Largest head dimension (Dk, Dv for GDN; P, N for Mamba-2) the kernels serve.
constexpr int64_t kDecodeMaxDim = 256;

// Whether gdn_decode_step serves these operands: policy Auto, grad mode off, every operand an
// fp32 CUDA tensor on the state's device, q, k [B,H,Dk], v [B,H,Dv], g, beta [B,H], state a
// contiguous [B,H,Dk,Dv] with 1 <= Dk, Dv <= 256. Otherwise the torch step runs.
bool gdn_decode_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& g, const at::Tensor& beta, const at::Tensor& state);

// One step of the gated delta rule, as model::gated_delta_rule_step_in_place: S = e^g S,
// u = beta (v - S^T k), S += k u^T (written into `state` itself), returns o = S^T q [B,H,Dv].
at::Tensor gdn_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& g, const at::Tensor& beta, at::Tensor& state);

// Whether mamba2_decode_step serves these operands: policy Auto, grad mode off, every operand an
// fp32 CUDA tensor on the state's device, x [B,H,P], delta [B,H], A [H], Bm, Cm [B,H,N], state a
// contiguous [B,H,P,N] with 1 <= P, N <= 256. Otherwise the torch step runs.
bool mamba2_decode_apply(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                         const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state);

// One SSD step, as model::ssd_step_in_place: h = e^(delta A) h + delta x Bm^T (written into
// `state` itself), returns y = h Cm [B,H,P], plus skip_h x when skip (the layer's D: a contiguous
// [H] fp32 or bf16 tensor on the state's device) is given: Mamba-2's skip term in the same launch.
at::Tensor mamba2_decode_step(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                              const at::Tensor& Bm, const at::Tensor& Cm, at::Tensor& state,
                              const at::Tensor& skip = at::Tensor());

// GKA's step options (gka_detail::SolveOptions at inference).
struct GkaDecodeOptions {
  double ridge_strength = 0.02;  // r: the ridge is r ||H||_F
  int num_iter = 30;             // Chebyshev iterations; 0: no solve, q~ = q, no H
  double output_scale = 1.0;     // D^-1/2 with gla_rescale
};

// Largest head dimension gka_decode_step serves (a thread of its 512 holds at most 32 values of H).
constexpr int64_t kGkaDecodeMaxDim = 128;

// Whether gka_decode_step serves these operands: policy Auto, grad mode off, q, k, v [B,H,D] of one
// solve dtype (fp32 or float64) on the states' device, alpha, decay_kk, decay_kv [B,H] of that
// dtype or undefined, kv_state (and kk_state where num_iter > 0; undefined otherwise) a contiguous
// fp32 [B,H,D,D] not requiring grad, 1 <= D <= 128, the block's shared memory within the device's,
// and PRIME_GKA_DECODE_KERNEL not "0" (the opt-out that times the torch step beside it).
// Otherwise the torch step runs.
bool gka_decode_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& alpha,
                      const at::Tensor& decay_kk, const at::Tensor& decay_kv, const at::Tensor& kk_state,
                      const at::Tensor& kv_state, const GkaDecodeOptions& options);

// One GKA step, as model::gka_detail::recurrent_step followed by the cache's store: in the solve
// dtype, H = e^decay_kk H + k k^T, x solves (H + r ||H||_F I) x = q by num_iter Chebyshev
// iterations, q~ = q + alpha (x - q) (x where alpha is undefined), S = e^decay_kv S + k v^T; both
// states written into the given tensors (rounded to fp32), returns o = scale S^T q~ [B,H,D] fp32.
at::Tensor gka_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& alpha,
                           const at::Tensor& decay_kk, const at::Tensor& decay_kv, at::Tensor& kk_state,
                           at::Tensor& kv_state, const GkaDecodeOptions& options);

}  // namespace prime::kernels
