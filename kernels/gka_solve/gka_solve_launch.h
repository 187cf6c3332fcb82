// Launcher of kernels/gka_solve (defined in gka_solve_kernels.cu; called only by gka_solve.cpp in
// CUDA builds). Operands are contiguous fp32 CUDA tensors with the leading dims flattened to M
// chunks; the launcher checks shapes and the launch.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

// The Chebyshev iteration of GKA's chunked solve (see gka_solve.h) for M chunks at once:
// q, keys [M, C, D]; start [M, D, D]; weights [M, C, C]; from_start, frob [M, C]. Writes x
// [M, C, D] and, when defined, iterates [N, M, C, D] (the x each iteration starts from).
// C <= 64, D a multiple of 16 up to 128.
// Whether one block's shared memory for chunks of C rows and head dim D fits the device's limit
// (H100/H200: D = 128 with C = 64 does; an A100 takes smaller shapes only).
bool gka_chunk_solve_fits(const at::Device& device, int64_t C, int64_t D);

void launch_gka_chunk_solve(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                            const at::Tensor& weights, const at::Tensor& from_start,
                            const at::Tensor& frob, double ridge_strength, int num_iter,
                            const at::Tensor& x, const at::Tensor& iterates);

}  // namespace prime::kernels::detail
