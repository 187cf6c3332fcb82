// Launcher of kernels/linear_decode (defined in linear_decode_kernels.cu; called only by
// linear_decode.cpp in CUDA builds). x is a contiguous, 16-byte aligned CUDA tensor [rows, K]
// with 1 <= rows <= 4; weight a contiguous, 16-byte aligned [N, K] of x's dtype (fp32, bf16 or
// fp16), K a multiple of 16 bytes; bias undefined or contiguous [N] of that dtype; out a
// contiguous [rows, N] of that dtype. The launcher checks them and the launch, and launches on the
// current stream.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

// out = x weightᵀ (+ bias), fp32 sums, one rounding.
void launch_linear_decode(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& out);

}  // namespace prime::kernels::detail
