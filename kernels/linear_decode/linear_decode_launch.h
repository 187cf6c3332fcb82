// Launchers of kernels/linear_decode (defined in linear_decode_kernels.cu; called only by
// linear_decode.cpp in CUDA builds). x is a contiguous, 16-byte aligned CUDA tensor [rows, K]
// with 1 <= rows <= 4; every weight a contiguous, 16-byte aligned [N_i, K] of x's dtype (fp32,
// bf16 or fp16), K a multiple of 16 bytes; each bias undefined or contiguous [N_i] of that dtype;
// each out a contiguous [rows, N_i] of that dtype. The launchers check them and the launch, and
// launch on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

// out_i = x weight_iᵀ (+ bias_i) for 1 to 4 weights sharing x, one launch (the rows of all the
// weights one row space), fp32 sums, one rounding. biases has weights' size (undefined entries: no
// bias). one_wave: a grid of one wave whose warps take the work round robin, else a warp per unit
// of work and as many blocks as that needs.
void launch_linear_decode(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::TensorList outs,
                          bool one_wave);

// out = silu(x gateᵀ) * (x upᵀ), gate and up both [N, K]; a warp owns row r of both. Rounded as the
// torch form rounds: each projection to the dtype, silu of it to the dtype, the product to the dtype.
void launch_linear_decode_gated_silu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                                     const at::Tensor& out, bool one_wave);

}  // namespace prime::kernels::detail
