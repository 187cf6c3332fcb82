// GKA's chunked solve in the bf16 form on one warpgroup a chunk (gka_solve_bf16_wgmma_one.cuh), two chunks a
// multiprocessor: the first piece of the bf16 forward's next per-chunk kernel (kernels/README.md, gka_solve), here
// alone, so that its output and its time can be checked before the rest of that kernel is built around it.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// x [M,64,128] fp32: num_iter Chebyshev iterations of (H_t + lambda_t I) x_t = q_t for the 64 positions of M
// chunks at head dim 128, H_t x = e^{G_t} H_0 x + sum_j W_tj k_j (k_j . x), lambda_t = r ||H_t||_F, in the bf16
// form (gka_solve_bf16.cuh). q and keys bf16 [M,64,128], h0 bf16 [M,128,128] (symmetric), weights fp32 [M,64,64]
// (zero above the diagonal), from_start (e^{G_t}) and frob (||H_t||_F > 0) fp32 [M,64], all contiguous on one CUDA
// device with the warpgroup MMAs (a Hopper GPU and this build's sm_90a code); num_iter >= 1.
at::Tensor gka_solve_one_group(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& h0,
                               const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                               double ridge_strength, int num_iter);

// The kernel's blocks a multiprocessor on the current CUDA device (the occupancy the form is built for: 2).
int gka_solve_one_group_blocks_per_multiprocessor();

}  // namespace prime::kernels
