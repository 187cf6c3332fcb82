// Launcher of kernels/attention_decode (defined in attention_decode_kernels.cu; called only by
// attention_decode.cpp in CUDA builds). q [B, Hq, D], keys and values [B, Hkv, S, D] contiguous,
// one dtype; visible bool [S]; out [B, Hq, D] in that dtype. Checks shapes and the launch.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

void launch_attention_decode(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                             const at::Tensor& visible, double scale, const at::Tensor& out);

// The bf16 case on the tensor cores (attention_decode_mma.cu), after launch_attention_decode's
// checks.
void launch_attention_decode_mma(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                                 const at::Tensor& visible, double scale, const at::Tensor& out);

}  // namespace prime::kernels::detail
