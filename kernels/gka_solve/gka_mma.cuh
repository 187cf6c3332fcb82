// Tensor-core helpers shared by kernels/gka_solve's forward and backward kernels: 3xTF32 warp
// matmuls on wmma fragments (kernels/common/tf32x3_mma.cuh: fp32 accuracy, a = a_hi + a_lo,
// a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi, fp32 accumulation), block-wide matmuls on them and
// the element ownership of the per-iteration passes. A block is
// 16 warps holding one chunk; every operand is a row-major fp32 matrix whose rows start 32-byte
// aligned and whose row stride is a multiple of 4 floats (wmma's rules).
#pragma once

#include <mma.h>

#include "kernels/common/tf32x3_mma.cuh"
#include "kernels/gka_solve/gka_chebyshev.cuh"

namespace prime::kernels::detail::gka {

using namespace nvcuda;

// 16 warps: a block holds one chunk (all of shared memory at D = 128), so its own warps are
// what hides the shared-memory and tensor-core latencies.
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxChunk = 64;
constexpr int kMaxDim = 128;
constexpr int kPad = 4;  // row padding of the wmma operands: breaks bank aliasing, keeps 32 B alignment

using tf32x3::FragA;
using tf32x3::FragB;
using tf32x3::FragC;
using tf32x3::split_tf32;
using tf32x3::warp_gemm;

// out[rows, ncols] (ld_out) = (accumulate ? out : 0) + A[rows, depth] B[depth, ncols] (A
// row-major), the tiles spread over the warps: a task is one 16-row block times NT 16-column tiles.
template <int NT, typename MajorB, bool kRoundedSteps = false>
__device__ void block_gemm(float* out, int ld_out, bool accumulate, const float* A, int lda,
                           const float* B, int ldb, int rows, int ncols, int depth) {
  const int warp = threadIdx.x / 32;
  const int groups = ncols / (16 * NT);
  const int tasks = (rows / 16) * groups;
  for (int task = warp; task < tasks; task += kWarps) {
    const int row0 = (task / groups) * 16, col0 = (task % groups) * 16 * NT;
    FragC acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (accumulate)
        wmma::load_matrix_sync(acc[t], out + row0 * ld_out + col0 + 16 * t, ld_out, wmma::mem_row_major);
      else
        wmma::fill_fragment(acc[t], 0.0f);
    }
    warp_gemm<NT, wmma::row_major, MajorB, kRoundedSteps>(acc, A + row0 * lda, lda, B, ldb, depth, col0);
#pragma unroll
    for (int t = 0; t < NT; ++t)
      wmma::store_matrix_sync(out + row0 * ld_out + col0 + 16 * t, acc[t], ld_out, wmma::mem_row_major);
  }
}

template <typename MajorB, bool kRoundedSteps = false>
__device__ void block_gemm_any(float* out, int ld_out, bool accumulate, const float* A, int lda,
                               const float* B, int ldb, int rows, int ncols, int depth) {
  // Two tiles per task (reusing each A fragment) where that still gives every warp a task.
  if (ncols % 32 == 0 && (rows / 16) * (ncols / 32) >= kWarps)
    block_gemm<2, MajorB, kRoundedSteps>(out, ld_out, accumulate, A, lda, B, ldb, rows, ncols, depth);
  else
    block_gemm<1, MajorB, kRoundedSteps>(out, ld_out, accumulate, A, lda, B, ldb, rows, ncols, depth);
}

// dst[r, c] (row stride ld) = src[r * width + c] for r < valid, 0 for valid <= r < rows: a
// block's copy of a row-major matrix into shared memory, rows beyond `valid` zero padding.
__device__ inline void load_rows(float* dst, int ld, const float* __restrict__ src, int rows, int valid,
                                 int width) {
  for (int i = threadIdx.x; i < rows * width; i += kThreads) {
    const int r = i / width, c = i % width;
    dst[r * ld + c] = r < valid ? src[i] : 0.0f;
  }
}

// Per row t of a chunk (frob and from_start point at its C values) the factors RowFactors forms
// (gka_chebyshev.cuh), written for t < padded (zeros for the padding rows).
__device__ inline void load_row_factors(float* eta, float* keep, float* decay, const float* __restrict__ frob,
                                        const float* __restrict__ from_start, int chunk, int padded,
                                        double ridge_strength) {
  for (int t = threadIdx.x; t < padded; t += kThreads) {
    const RowFactors f(frob, from_start, t, chunk, ridge_strength);
    eta[t] = f.eta;
    keep[t] = f.keep;
    decay[t] = f.decay;
  }
}

// The elements i = threadIdx.x + j * kThreads (j = 0, 1, ...) of a row-major [rows, width]
// matrix, as (row, column): when width divides kThreads (D or Cp of 16, 32, 64, 128) the column
// is the same for every j and the row advances by kThreads / width, so the per-iteration passes
// need no integer division.
struct Owned {
  int row0, col, row_step, width;
  bool even;
  __device__ explicit Owned(int w) : width(w), even(kThreads % w == 0) {
    row0 = threadIdx.x / w;
    col = threadIdx.x % w;
    row_step = kThreads / w;
  }
  __device__ __forceinline__ int row(int j) const {
    return even ? row0 + j * row_step : (threadIdx.x + j * kThreads) / width;
  }
  __device__ __forceinline__ int column(int j) const {
    return even ? col : (threadIdx.x + j * kThreads) % width;
  }
};

}  // namespace prime::kernels::detail::gka
