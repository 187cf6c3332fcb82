// GKA's chunked forward on bf16 tensor cores (prefill and evaluation: no autograd), the whole of
// lib/model/gka_chunked.cpp's chunked_core in three launches:
//  1, 2. the walks over 64-step chunks for H and S (kernels/ssd_chunk's bf16 walk, u = v = k and
//     u = v, v = k, the log decays as its decay alone): the states entering each chunk in bf16, the
//     final states in fp32;
//  3. per chunk (gka_forward_bf16_kernels.cu): the decays, ||H_t||_F from its three parts, the
//     Chebyshev solve (the keys and H_0 in bf16, X split for X K^T: gka_solve_bf16.cuh's bf16 form),
//     q~ = scale (q + alpha (x - q)) kept split, and the gated linear attention's output.
// The states are carried in fp32 and rounded to bf16 where they enter a chunk's products; q, k, v
// are bf16. The output stays within ~2x its sensitivity to bf16 q, k, v (experiments/gka_bf16_forward).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace prime::kernels {

// Whether gka_forward_bf16 serves chunked_core for these operands: policy Auto, no gradient to
// record on any of them, q, k, v [B,T,H,D] all bf16 or all fp32 on one CUDA device with D in
// {32, 64, 128}, B*H and the 64-step chunk count <= 65535; one log decay for both states (the same tensor, or both
// undefined), fp32 [B,T,H]; alpha fp32 [B,T,H] or undefined; the states fp32 [B,H,D,D] or
// undefined; num_iter >= 1; chunk_starts only with chunk_size 64.
bool gka_forward_bf16_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& log_decay_kk, const at::Tensor& log_decay_kv, const at::Tensor& alpha,
                            const at::Tensor& kk_state, const at::Tensor& kv_state, int64_t chunk_size,
                            const at::Tensor& chunk_starts, int num_iter);

// Where the per-chunk kernel's solve on `device` keeps its iterate: PRIME_GKA_FORWARD_ITERATE =
// "registers" (2 (D / 32) warps own 32 x 32 blocks of it at D = 64 and 128; D = 32 keeps it in shared
// memory), "shared" (16 warps, the iterate in shared memory, at every D), "wgmma" (a warpgroup per
// 64 columns holds it, the products on Hopper's warpgroup MMAs, at D = 64 and 128; other GPUs refuse
// it) or "one-group" (one warpgroup a chunk holds all of it at D = 128, two chunks a multiprocessor, the
// prologue and the epilogue in launches of their own; D = 64 takes "wgmma"; other GPUs refuse it).
// Unset: "one-group" where gka_forward_wgmma_available(device), else "registers". Anything else: a
// UserError.
enum class GkaForwardIterate { Registers, Shared, Wgmma, OneGroup };
GkaForwardIterate gka_forward_iterate(const at::Device& device);

// Whether `device` runs the wgmma form (a CUDA build with sm_90a code and a Hopper GPU).
bool gka_forward_wgmma_available(const at::Device& device);

// The form the per-chunk kernel of this process's last gka_forward_bf16 call took (what ran, after
// D = 32's substitution); Registers before any call. For tests and benchmarks.
GkaForwardIterate gka_forward_last_form();

struct GkaForwardBf16 {
  at::Tensor o;         // [B,T,H,D] in q's dtype
  at::Tensor kk_state;  // final H [B,H,D,D] fp32
  at::Tensor kv_state;  // final S [B,H,D,D] fp32
};

// chunked_core's result (o before the output norm, times output_scale) from the kernels: q, k, v,
// log_decay, alpha as gka_forward_bf16_apply takes them (log_decay undefined: no decay),
// kk_state / kv_state the states entering (undefined: zeros), chunk_starts [ceil(T / 64)] bool or
// undefined (a flagged chunk starts both states from zero).
GkaForwardBf16 gka_forward_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& log_decay, const at::Tensor& alpha, const at::Tensor& kk_state,
                                const at::Tensor& kv_state, const at::Tensor& chunk_starts, double ridge_strength,
                                int num_iter, double output_scale);

}  // namespace prime::kernels
