// Fused gated head norms: the output norms of the SSM mixers, each a chain of ~8 ATen passes over
// [tokens, heads, D] fp32 activations per direction in its torch form (casts, SiLU, the row mean
// of squares, rsqrt, two or three products, the cast to the projection's dtype), here one kernel
// forward and one backward. Two orders:
//   GateOrder::AfterNorm  (GDN, GKA):  y = w * rms_normalize(x) * silu(g)
//   GateOrder::BeforeNorm (Mamba-2):   y = w * rms_normalize(x * silu(g))
// rms_normalize over each row of D (x * rsqrt(mean(x^2) + eps)); w is [D] (every head) or [H * D]
// (a slice per head). The result is rounded once, to out_type: the projection after the norm
// takes it as is.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// Longest row (D) the kernels serve: a warp per row, at most 8 elements per lane.
constexpr int64_t kGatedNormMaxDim = 256;

enum class GateOrder { AfterNorm, BeforeNorm };

// Whether gated_norm serves these operands: policy Auto; x fp32 CUDA [..., H, D] with unit stride
// over D and the leading dims viewable as one (any other strides: e.g. a slice of a wider
// projection); gate of x's sizes, fp32 or bf16, laid out the same way; weight 1-D fp32 or bf16
// of D or H * D elements on x's device; 1 <= D <= 256; out_type fp32 or bf16.
bool gated_norm_apply(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, at::ScalarType out_type);

// The gated norm as an autograd function (node "GatedNormKernel"; also serves calls autograd does
// not record): the forward kernel saves x, the gate and the weight, and the backward kernel
// recomputes each row's scale from them. Gradients: x's in fp32, the gate's in its dtype, the
// weight's (where wanted) the sum over rows of the per-element products the backward kernel
// writes, in the weight's dtype. Output [..., H, D] of out_type, contiguous.
at::Tensor gated_norm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, double eps,
                      GateOrder order, at::ScalarType out_type);

}  // namespace prime::kernels
