// chunk_gemm's epilogue (kernels/chunk_gemm) for the GDN backward's one-block-per-chunk kernels that form a sum of
// products in registers themselves (gdn_backward_value_kernels.cu, gdn_backward_query_key_kernels.cu): the same
// operations in the same order, so the same bits as the chunk_gemm launches they replace.
#pragma once

#include <cuda_bf16.h>

#include "kernels/common/bf16_tiles.cuh"

namespace prime::kernels::detail::backward_sums {

using bf16_tiles::Acc;
using bf16_tiles::Bf16;

__device__ __forceinline__ void store_pair(float* to, float x0, float x1) {
  *reinterpret_cast<float2*>(to) = make_float2(x0, x1);
}
__device__ __forceinline__ void store_pair(Bf16* to, float x0, float x1) {
  *reinterpret_cast<__nv_bfloat162*>(to) = __floats2bfloat162_rn(x0, x1);
}

// One term of a sum for the warp's 16 rows at row0 by 32 columns at col0 (acc[0], acc[1]: 16 columns each), as
// chunk_gemm's epilogue takes a term with alpha 1 and no column scale: with kDot each row's dot of the product with
// `with` (bf16 rows, row stride ld, shared memory) over these 32 columns, the lane's pairs in ascending column order
// and then the four lanes of the row by two shuffles, stored to dots[row] by the row's first lane; then value = the
// product times scale[row] (unscaled where scale is null), plus sum with kAdd, into sum: each operation rounded on
// its own (no multiply fused into the add), as chunk_gemm's epilogue makes them.
template <bool kDot, bool kAdd>
__device__ __forceinline__ void fold_term(Acc* sum, const Acc* acc, const Bf16* with, int ld, int row0, int col0,
                                          const float* scale, float* dots) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + g + 8 * half;
    const float factor = scale != nullptr ? scale[row] : 1.0f;
    float dot = 0.0f;
#pragma unroll
    for (int u = 0; u < 2; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int e = 4 * h + 2 * half;
        float x0 = acc[u].x[e], x1 = acc[u].x[e + 1];
        if constexpr (kDot) {
          const int col = col0 + 16 * u + 8 * h + 2 * t;
          const float2 w = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(with + row * ld + col));
          dot = fmaf(x0, w.x, dot);
          dot = fmaf(x1, w.y, dot);
        }
        if (scale != nullptr) x0 = __fmul_rn(x0, factor), x1 = __fmul_rn(x1, factor);
        if constexpr (kAdd) {
          x0 = __fadd_rn(x0, sum[u].x[e]), x1 = __fadd_rn(x1, sum[u].x[e + 1]);
        }
        sum[u].x[e] = x0, sum[u].x[e + 1] = x1;
      }
    if constexpr (kDot) {
      dot += __shfl_xor_sync(0xffffffffu, dot, 1);
      dot += __shfl_xor_sync(0xffffffffu, dot, 2);
      if (t == 0) dots[row] = dot;
    }
  }
}

// The rows' dots over each 64 columns from its two 32-column halves (row_dots[tile][half][row], shared memory,
// complete), added in chunk_gemm's order into out[tile * 64 + row]; a 32-column D has one half (chunk_gemm's other
// half, all past n, adds zero). THREADS threads call it.
template <int D, int THREADS>
__device__ __forceinline__ void write_row_dots(const float (*row_dots)[2][64], float* out) {
  constexpr int kTiles = (D + 63) / 64;
  for (int index = threadIdx.x; index < kTiles * 64; index += THREADS) {
    const int tile = index / 64, row = index % 64;
    const float second = D >= 64 ? row_dots[tile][1][row] : 0.0f;
    out[index] = row_dots[tile][0][row] + second;
  }
}

}  // namespace prime::kernels::detail::backward_sums
