// Launcher of GKA's bf16 forward's per-chunk kernel (gka_forward_bf16_kernels.cu; called only by
// gka_forward_bf16.cpp in CUDA builds).
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>

namespace prime::kernels::detail {

// Shared memory of one block for head dim D (32, 64 or 128).
size_t gka_forward_bf16_shared_bytes(int64_t D);

// Whether that block fits the device's shared memory (the H200 takes every D; an A100 not D = 128).
bool gka_forward_bf16_fits_device(int64_t D, const at::Device& device);

// Whether the device runs the warpgroup MMAs the kIterateWgmma form issues (sm_90 and this build's
// machine code for it: common/wgmma_device.h).
bool gka_forward_bf16_wgmma_device(const at::Device& device);

// o [B,T,H,D] (fp32 or bf16, contiguous) = output_scale (e^{G_t} q~_t S_0 + sum_j W_tj (q~_t.k_j) v_j),
// q~ = q + alpha (x - q), x the chunked solve of (H_t + lambda_t) x = q_t for every position: q, k, v
// bf16 contiguous [B,T,H,D] (16-byte aligned), log_decay fp32 contiguous [B,T,H], alpha fp32
// contiguous [B,T,H] or undefined (alpha = 1), h_states / s_states bf16 [B*H, nC, D, D] the H and
// S^T entering each 64-step chunk (kernels/ssd_chunk's walk). D in {32, 64, 128}. iterate: where
// the solve keeps its iterate, kIterateRegisters, kIterateShared, kIterateWgmma (the warpgroup
// MMAs: a Hopper GPU) or kIterateOneGroup (one warpgroup a chunk at D = 128, in three launches; D = 64
// takes kIterateWgmma); D = 32 takes the shared-memory form whichever is asked. Returns the form that
// ran.
constexpr int kIterateShared = 0, kIterateRegisters = 1, kIterateWgmma = 2, kIterateOneGroup = 3;
int launch_gka_forward_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_decay,
                             const at::Tensor& alpha, const at::Tensor& h_states, const at::Tensor& s_states,
                             double ridge_strength, int num_iter, double output_scale, int iterate,
                             const at::Tensor& o);

}  // namespace prime::kernels::detail
