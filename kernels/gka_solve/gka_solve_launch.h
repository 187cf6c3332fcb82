// Launchers of kernels/gka_solve (defined in gka_solve_kernels.cu and
// gka_solve_backward_kernels.cu; called only by gka_solve.cpp in CUDA builds). Operands are
// contiguous fp32 CUDA tensors with the leading dims flattened to M chunks; the launchers check
// shapes and the launch.
#pragma once

#include <ATen/ATen.h>

#include "kernels/gka_solve/gka_solve.h"

namespace prime::kernels::detail {

// The Chebyshev iteration of GKA's chunked solve (see gka_solve.h) for M chunks at once:
// q, keys [M, C, D]; start [M, D, D]; weights [M, C, C]; from_start, frob [M, C]. Writes x
// [M, C, D] and, when defined, iterates [N, M, C, D] (the x each iteration starts from), or
// [M, N, C, D] with chunk_major.
// C <= 64, D a multiple of 16 up to 128.
// Whether one block's shared memory for chunks of C rows and head dim D fits the device's limit
// (H100/H200: D = 128 with C = 64 does; an A100 takes smaller shapes only).
bool gka_chunk_solve_fits(const at::Device& device, int64_t C, int64_t D);

// The forward kernel on the raw TF32 MMA (gka_solve_mma_kernels.cu), which launch_gka_chunk_solve
// takes where it serves (D a multiple of 32 up to 128) unless PRIME_GKA_SOLVE_WMMA=1 (read at each
// call) keeps the general wmma kernel, for timing and debugging. Operands as launch_gka_chunk_solve.
bool gka_chunk_solve_mma_serves(int64_t C, int64_t D);
size_t gka_chunk_solve_mma_shared_bytes(int64_t C, int64_t D);
void launch_gka_chunk_solve_mma(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                                double ridge_strength, int num_iter, const at::Tensor& x, const at::Tensor& iterates,
                                bool chunk_major);

// The forward kernel on the bf16 tensor cores (gka_solve_bf16_kernels.cu), which
// launch_gka_chunk_solve takes for SolveProducts::Bf16x3 (bf16x3 true) and Bf16 where it serves (D
// in {32, 64, 96, 128}; elsewhere those fall back to the TF32 kernels' fp32 accuracy). `form` as
// gka_solve_bf16.cuh's: 3 bf16x3, 2 the bf16 form. PRIME_GKA_SOLVE_WMMA concerns the TF32 kernels only.
// Callers pass launch_gka_chunk_solve's operand checks; this one adds the 8-byte alignment it needs.
bool gka_chunk_solve_bf16_serves(int64_t C, int64_t D);
size_t gka_chunk_solve_bf16_shared_bytes(int64_t C, int64_t D, int form);
void launch_gka_chunk_solve_bf16(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                 const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                                 double ridge_strength, int num_iter, const at::Tensor& x, const at::Tensor& iterates,
                                 bool bf16x3);

void launch_gka_chunk_solve(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                            const at::Tensor& weights, const at::Tensor& from_start,
                            const at::Tensor& frob, double ridge_strength, int num_iter,
                            const at::Tensor& x, const at::Tensor& iterates, SolveProducts products,
                            bool chunk_major = false);

// The reverse sweep (gka_solve.h, gka_chunk_solve_backward) for M chunks: operands as above,
// iterates [N, M, C, D], grad [M, C, D]; writes every gradient in `out`: q [M, C, D], keys
// [M, Cp, D] (rows padded to Cp, a multiple of 16, the padding rows zero), start [M, D, D],
// weights [M, C, C], from_start and frob [M, C].
bool gka_chunk_solve_backward_fits(const at::Device& device, int64_t C, int64_t D, int64_t num_iter);

// The reverse sweep on the raw TF32 MMA (gka_solve_backward_mma_kernels.cu), which
// launch_gka_chunk_solve_backward takes where it serves (D a multiple of 32 up to 128) unless
// PRIME_GKA_BACKWARD_WMMA=1 (read at each call) keeps the general wmma kernel. Both mma kernels
// rely on weights being zero above the diagonal (model::gka_detail::ChunkSystem's contract).
bool gka_chunk_solve_backward_mma_serves(int64_t C, int64_t D);
size_t gka_chunk_solve_backward_mma_shared_bytes(int64_t C, int64_t D, int64_t num_iter);
// bf16x3: its products on three bf16 MMAs per 16-deep step (gka_mma_fragments.cuh's bf16x3 steps)
// instead of 3xTF32.
void launch_gka_chunk_solve_backward_mma(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                         const at::Tensor& weights, const at::Tensor& from_start,
                                         const at::Tensor& frob, double ridge_strength, int num_iter,
                                         const at::Tensor& iterates, const at::Tensor& grad,
                                         const GkaSolveGradients& out, bool bf16x3 = false);

// products: Bf16x3 takes the mma kernel's bf16x3 steps where that kernel serves; the wmma kernel
// (other head dims, or PRIME_GKA_BACKWARD_WMMA=1) stays 3xTF32.
void launch_gka_chunk_solve_backward(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                     const at::Tensor& weights, const at::Tensor& from_start,
                                     const at::Tensor& frob, double ridge_strength, int num_iter,
                                     const at::Tensor& iterates, const at::Tensor& grad,
                                     const GkaSolveGradients& out, SolveProducts products = SolveProducts::Tf32x3);

// The adjoint recurrence (gka_solve.h, gka_chunk_adjoint_recurrence; gka_adjoint_mma_kernels.cu) for M
// chunks: operands as the reverse sweep's but the iterates chunk-major [M, N, C, D]; writes adjoints
// [M, N, C, D], d_q [M, C, D], d_from_start and
// d_frob [M, C]. D a multiple of 32 up to 128, C <= 64.
bool gka_chunk_adjoint_mma_serves(int64_t C, int64_t D);
bool gka_chunk_adjoint_fits(const at::Device& device, int64_t C, int64_t D, int64_t num_iter);
size_t gka_chunk_adjoint_mma_shared_bytes(int64_t C, int64_t D, int64_t num_iter);
void launch_gka_chunk_adjoint_mma(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                  const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                                  double ridge_strength, int num_iter, const at::Tensor& iterates,
                                  const at::Tensor& grad, const at::Tensor& adjoints, const at::Tensor& d_q,
                                  const at::Tensor& d_from_start, const at::Tensor& d_frob);

// The bf16 form's solve on one warpgroup a chunk (gka_solve_one_kernels.cu; gka_solve_one.h says the operands),
// returning x [M,64,128] fp32.
at::Tensor launch_gka_solve_one(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& h0,
                                const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                                double ridge_strength, int num_iter);
// Its blocks a multiprocessor of the current device (two where its 113 KB of shared memory fit twice).
int gka_solve_one_blocks_per_multiprocessor();

}  // namespace prime::kernels::detail
