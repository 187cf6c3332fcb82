// Device pieces of the chunked forwards on bf16 tensor cores (wmma 16x16x16, fp32 accumulation):
// gdn_chunk's bf16 fused forward and ssd_chunk's bf16 forward. Shared bf16 matrices are row-major
// with (width + 8) elements per row (ld_of): a multiple of 8 (wmma's rule for 16-bit types) whose
// rows fall on different banks, so 16-row blocks start 32-byte aligned. Accumulator fragments
// reach memory through a per-warp fp32 scratch tile (wmma's fragment layout is opaque).
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/cp_async.cuh"

namespace prime::kernels::detail::bf16_wmma {

namespace wmma = nvcuda::wmma;
using Bf16 = __nv_bfloat16;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, Bf16, wmma::row_major>;
using FragAt = wmma::fragment<wmma::matrix_a, 16, 16, 16, Bf16, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, Bf16, wmma::row_major>;
using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, 16, Bf16, wmma::col_major>;
using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

constexpr int kScratchLd = 20;                      // a warp's fp32 scratch tile: [16][20]
constexpr int kScratchBytes = 16 * kScratchLd * 4;  // 1280: 32-byte aligned tiles

__host__ __device__ constexpr int ld_of(int width) { return width + 8; }

__device__ __forceinline__ uint4 pack8(const float* x) {
  uint4 packed;
  __nv_bfloat162* halves = reinterpret_cast<__nv_bfloat162*>(&packed);
#pragma unroll
  for (int i = 0; i < 4; ++i) halves[i] = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
  return packed;
}

__device__ __forceinline__ void unpack8(const uint4& packed, float* x) {
  const __nv_bfloat162* halves = reinterpret_cast<const __nv_bfloat162*>(&packed);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 pair = __bfloat1622float2(halves[i]);
    x[2 * i] = pair.x;
    x[2 * i + 1] = pair.y;
  }
}

// The warp's 16x16 fp32 tile through its scratch: lane l gets row l / 2, columns 8 (l % 2)..+8
// in x and calls emit(row, col, x).
template <typename Emit>
__device__ __forceinline__ void emit_tile(const Acc& tile, float* scratch, Emit&& emit) {
  wmma::store_matrix_sync(scratch, tile, kScratchLd, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x % 32, row = lane / 2, col = (lane % 2) * 8;
  float x[8];
  const float4 low = *reinterpret_cast<const float4*>(scratch + row * kScratchLd + col);
  const float4 high = *reinterpret_cast<const float4*>(scratch + row * kScratchLd + col + 4);
  x[0] = low.x, x[1] = low.y, x[2] = low.z, x[3] = low.w;
  x[4] = high.x, x[5] = high.y, x[6] = high.z, x[7] = high.w;
  __syncwarp();
  emit(row, col, x);
}

// dst [ROWS][WIDTH] (row stride ld_of(WIDTH)) <- src (row stride src_ld), asynchronously; rows at
// or past `valid_rows` are zeros (their source is not read). THREADS threads call it.
template <int ROWS, int WIDTH, int THREADS>
__device__ __forceinline__ void copy_async(Bf16* dst, const Bf16* src, size_t src_ld, int valid_rows = ROWS) {
  constexpr int kVectors = WIDTH / 8;
  for (int index = threadIdx.x; index < ROWS * kVectors; index += THREADS) {
    const int row = index / kVectors, col = (index % kVectors) * 8;
    const bool valid = row < valid_rows;
    cp_async16_or_zero(dst + row * ld_of(WIDTH) + col, src + (valid ? row * src_ld + col : 0), valid);
  }
}

// dst [ROWS][WIDTH] <- src rows (row stride src_ld elements, 16-byte aligned), rows at or past
// `valid_rows` zeros; synchronous 16-byte loads through the read-only cache.
template <int ROWS, int WIDTH, int THREADS>
__device__ __forceinline__ void load_rows(Bf16* dst, const Bf16* src, size_t src_ld, int valid_rows) {
  constexpr int kVectors = WIDTH / 8;
  for (int index = threadIdx.x; index < ROWS * kVectors; index += THREADS) {
    const int row = index / kVectors, col = (index % kVectors) * 8;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (row < valid_rows) value = __ldg(reinterpret_cast<const uint4*>(src + row * src_ld + col));
    *reinterpret_cast<uint4*>(dst + row * ld_of(WIDTH) + col) = value;
  }
}

// x[t][:] *= factor(t) for the ROWS rows of a [ROWS][WIDTH] shared matrix, in place.
template <int ROWS, int WIDTH, int THREADS, typename Factor>
__device__ __forceinline__ void scale_rows(Bf16* x, Factor factor) {
  constexpr int kVectors = WIDTH / 8;
  for (int index = threadIdx.x; index < ROWS * kVectors; index += THREADS) {
    const int t = index / kVectors, i = (index % kVectors) * 8;
    uint4* at = reinterpret_cast<uint4*>(x + t * ld_of(WIDTH) + i);
    float values[8];
    unpack8(*at, values);
    const float f = factor(t);
#pragma unroll
    for (int e = 0; e < 8; ++e) values[e] *= f;
    *at = pack8(values);
  }
}

// acc = X[16 rows at row0] Y[16 rows at col0]^T over depth D, X and Y [rows][D] in shared memory.
template <int D>
__device__ __forceinline__ void gram_tile(Acc& acc, const Bf16* x, const Bf16* y, int row0, int col0) {
  wmma::fill_fragment(acc, 0.0f);
#pragma unroll
  for (int k0 = 0; k0 < D; k0 += 16) {
    FragA a;
    FragBt bt;
    wmma::load_matrix_sync(a, x + row0 * ld_of(D) + k0, ld_of(D));
    wmma::load_matrix_sync(bt, y + col0 * ld_of(D) + k0, ld_of(D));
    wmma::mma_sync(acc, a, bt, acc);
  }
}

// acc[t] += A[16 rows, 0:depth] B[0:depth, col0 + 16 t : +16] for t < NT; A (lda) points at its
// row block. B is row-major (ldb), or with Transposed B = S^T for a row-major S [cols][depth]
// (ldb). A lower-triangular A's row block r needs depth 16 (r + 1) only.
template <int NT, bool Transposed = false>
__device__ __forceinline__ void row_block_product(Acc (&acc)[NT], const Bf16* a_rows, int lda, int depth,
                                                  const Bf16* b, int ldb, int col0) {
  for (int k0 = 0; k0 < depth; k0 += 16) {
    FragA a;
    wmma::load_matrix_sync(a, a_rows + k0, lda);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if constexpr (Transposed) {
        FragBt bm;
        wmma::load_matrix_sync(bm, b + (col0 + 16 * t) * ldb + k0, ldb);
        wmma::mma_sync(acc[t], a, bm, acc[t]);
      } else {
        FragB bm;
        wmma::load_matrix_sync(bm, b + k0 * ldb + col0 + 16 * t, ldb);
        wmma::mma_sync(acc[t], a, bm, acc[t]);
      }
    }
  }
}

// out [64][ldo] (bf16) = (X Y^T) o L for a chunk of 64 steps, L_ij = weight(j) e^{gamma_i - gamma_j}
// for j <= i and 0 above (gamma: float64 prefix sums, so every exponent is <= 0), X and Y
// [64][D] in shared memory. Eight warps: warp w forms row block w % 4, column blocks 2 (w / 4)
// and 2 (w / 4) + 1 (the tiles above the diagonal as zeros), each through its scratch tile.
template <int D, typename Weight>
__device__ __forceinline__ void decayed_causal_scores(Bf16* out, int ldo, const Bf16* x, const Bf16* y,
                                                      const double* gamma, float* scratch, Weight&& weight) {
  const int warp = threadIdx.x / 32, r = warp % 4;
  for (int t = 0; t < 2; ++t) {
    const int c = 2 * (warp / 4) + t;
    Acc acc;
    if (c <= r)
      gram_tile<D>(acc, x, y, 16 * r, 16 * c);
    else
      wmma::fill_fragment(acc, 0.0f);
    emit_tile(acc, scratch, [&](int row, int col, float* v) {
      const int i = 16 * r + row;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int j = 16 * c + col + e;
        v[e] = j <= i ? weight(j) * expf(static_cast<float>(gamma[i] - gamma[j])) * v[e] : 0.0f;
      }
      *reinterpret_cast<uint4*>(out + i * ldo + 16 * c + col) = pack8(v);
    });
  }
}

}  // namespace prime::kernels::detail::bf16_wmma
