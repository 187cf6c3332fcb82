// Launcher of kernels/rope (defined in rope_kernels.cu; called only by rope.cpp in CUDA builds).
// q [B,T,Hq,D] and k [B,T,Hkv,D] of one dtype (fp32, bf16 or fp16), any strides; cos and sin
// contiguous fp32 [1 or B, T, 1, D]; q_out and k_out contiguous, shaped and typed as q and k.
// Everything on one CUDA device. The launcher checks shapes, dtypes and the launch, and launches
// on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

void launch_rope(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin,
                 const at::Tensor& q_out, const at::Tensor& k_out);

// q_norm and k_norm (RMSNorm over each head with the [D] weights, contiguous, of q's dtype), then
// the rotation, one launch. q and k as above but with unit element strides and every row on 16
// bytes; D an even number of 16-byte packs, at most 32 packs; cos, sin, weights and outputs
// 16-byte aligned.
void launch_rope_norm(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_weight, const at::Tensor& k_weight,
                      double eps, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& q_out,
                      const at::Tensor& k_out);

}  // namespace prime::kernels::detail
