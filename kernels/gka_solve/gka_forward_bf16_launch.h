// Launcher of GKA's bf16 forward's per-chunk kernel (gka_forward_bf16_kernels.cu; called only by
// gka_forward_bf16.cpp in CUDA builds).
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>

namespace prime::kernels::detail {

// Shared memory of one block for head dim D (32, 64 or 128).
size_t gka_forward_bf16_shared_bytes(int64_t D);

// q~ [B,T,H,D] bf16 = output_scale (q + alpha (x - q)), x the chunked solve of (H_t + lambda_t) x = q_t
// for every position: q, k bf16 contiguous [B,T,H,D] (16-byte aligned), log_decay fp32 contiguous
// [B,T,H], alpha fp32 contiguous [B,T,H] or undefined (alpha = 1), states bf16 [B*H, nC, D, D] the
// H entering each 64-step chunk. D in {32, 64, 128}.
void launch_gka_forward_bf16_solve(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_decay,
                                   const at::Tensor& alpha, const at::Tensor& states, double ridge_strength,
                                   int num_iter, double output_scale, const at::Tensor& q_tilde);

}  // namespace prime::kernels::detail
