// Launcher of kernels/rms_norm (defined in rms_norm_kernels.cu; called only by rms_norm.cpp in
// CUDA builds). x, residual, sum and out are contiguous CUDA tensors of one dtype (fp32, bf16 or
// fp16) and x's sizes; weight is contiguous 1-D of x.size(-1) <= 16384 elements. The launcher
// checks them and the launch, and launches on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

// out = rms_norm(src) with src = x, or with residual and sum defined, sum = x + residual (rounded
// to the dtype) and src = sum.
void launch_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                     double eps, const at::Tensor& sum, const at::Tensor& out);

// The backward of out = rms_norm(x) (rms_norm_backward_kernels.cu): dx from x, the output's
// gradient dy (x's sizes and dtype, contiguous) and the weight; with normed defined, also the
// normalised x before the weight (to_T(fp32(x) rsqrt(mean + eps))), for the weight's gradient.
void launch_rms_norm_backward(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& weight, double eps,
                              const at::Tensor& dx, const at::Tensor& normed);

}  // namespace prime::kernels::detail
