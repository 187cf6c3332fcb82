// Launchers of kernels/gated_norm (gated_norm_kernels.cu; called only by gated_norm.cpp in CUDA
// builds). Rows are [N, H, D] views: x fp32 and the gate (fp32 or bf16) may have any strides over
// N and H but unit stride over D; the weight is fp32 and contiguous, [D] (shared by every head) or
// [H * D] (a slice per head); every other operand is contiguous [N, H, D]. D <= kGatedNormMaxDim.
// The launchers check the operands and the launch, and launch on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

// out = the gated norm of x (gated_norm.h: GateOrder), in out's dtype (fp32 or bf16); here the
// weight may also be bf16 (read as stored: inference launches no cast).
void launch_gated_norm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, double eps,
                       bool gate_first, const at::Tensor& out);

// Its backward from dy (out's dtype): dx (fp32), dgate (the gate's dtype) and, where defined, the
// per-element products whose sum over rows is the weight's gradient (fp32).
void launch_gated_norm_backward(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, double eps,
                                bool gate_first, const at::Tensor& dy, const at::Tensor& dx,
                                const at::Tensor& dgate, const at::Tensor& weight_terms);

}  // namespace prime::kernels::detail
