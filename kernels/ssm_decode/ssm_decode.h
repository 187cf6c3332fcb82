// Fused single-token decode steps of the recurrent SSM cores, updating the cache's state in
// place: GDN's gated delta rule and Mamba-2's SSD. Decode is bound by memory traffic, and its
// floor is reading the state once and writing it once; the torch in-place steps (lib/model)
// read it three times and write it twice (GDN), or twice and twice (Mamba-2). One kernel each,
// launched on the current stream with no host synchronisation (capturable in a CUDA graph).
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
// `state` itself), returns y = h Cm [B,H,P].
at::Tensor mamba2_decode_step(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                              const at::Tensor& Bm, const at::Tensor& Cm, at::Tensor& state);

}  // namespace prime::kernels
