// 3xTF32 tensor-core warp matmuls on wmma fragments, fp32 accuracy: a = a_hi + a_lo (both tf32),
// a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi with fp32 accumulation. Every operand is an fp32 matrix
// whose rows start 32-byte aligned and whose row stride is a multiple of 4 floats (wmma's rules);
// operands may live in shared or global memory.
#pragma once

#include <mma.h>

#include <type_traits>

#include "kernels/common/tf32_split.cuh"

namespace prime::kernels::detail::tf32x3 {

using namespace nvcuda;

template <typename Major>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, Major>;
template <typename Major>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, Major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// hi <- tf32(v), lo <- tf32(v - hi) for the fp32 values loaded into hi (tf32_split.cuh).
template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
#pragma unroll
  for (int i = 0; i < hi.num_elements; ++i) {
    uint32_t high, low;
    split_tf32_bits(__float_as_uint(hi.x[i]), high, low);
    hi.x[i] = __uint_as_float(high);
    lo.x[i] = __uint_as_float(low);
  }
}

// acc[t] += A[16 rows, 0:depth] B[0:depth, col0 + 16 t : +16] for t < NT, 3xTF32.
// With kRoundedSteps, each k-step of 8 runs its three MMAs into a zeroed fragment that is then
// added to acc on the CUDA cores (fp32, round to nearest): the tensor cores' accumulation aligns
// its addends to the largest exponent and truncates, which over a long running sum (the reverse
// sweep's gradients, summed over N iterations) costs digits that a rounded fp32 add keeps.
// A: with MajorA = row_major, the 16 rows starting at `A` of a row-major matrix (lda); with
// col_major, A = M^T for a row-major M (lda = M's row stride) and `A` points at M's column of the
// first row, so A's row m is M's column m. B likewise: row_major (ldb), or col_major for B = M^T
// (B's column n is M's row n). With `scale` (B row-major only), B's row k is multiplied by
// scale[16 k] before the split: `scale` is a [depth, 16] matrix whose row k repeats one factor,
// loaded as a B fragment, so its elements line up with B's whatever the fragment layout is.
template <int NT, typename MajorA, typename MajorB, bool kRoundedSteps = false>
__device__ __forceinline__ void warp_gemm(FragC (&acc)[NT], const float* A, int lda, const float* B, int ldb,
                                          int depth, int col0, const float* scale = nullptr) {
  constexpr bool kRowA = std::is_same<MajorA, wmma::row_major>::value;
  constexpr bool kRowB = std::is_same<MajorB, wmma::row_major>::value;
  for (int k0 = 0; k0 < depth; k0 += 8) {
    FragA<MajorA> a_hi, a_lo;
    wmma::load_matrix_sync(a_hi, kRowA ? A + k0 : A + k0 * lda, lda);
    split_tf32(a_hi, a_lo);
    FragB<MajorB> factor;
    if constexpr (kRowB) {
      if (scale) wmma::load_matrix_sync(factor, scale + k0 * 16, 16);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int col = col0 + 16 * t;
      FragB<MajorB> b_hi, b_lo;
      wmma::load_matrix_sync(b_hi, kRowB ? B + k0 * ldb + col : B + col * ldb + k0, ldb);
      if constexpr (kRowB) {
        if (scale) {
#pragma unroll
          for (int i = 0; i < b_hi.num_elements; ++i) b_hi.x[i] *= factor.x[i];
        }
      }
      split_tf32(b_hi, b_lo);
      if constexpr (kRoundedSteps) {
        FragC step;
        wmma::fill_fragment(step, 0.0f);
        wmma::mma_sync(step, a_lo, b_hi, step);  // small terms first
        wmma::mma_sync(step, a_hi, b_lo, step);
        wmma::mma_sync(step, a_hi, b_hi, step);
#pragma unroll
        for (int i = 0; i < step.num_elements; ++i) acc[t].x[i] += step.x[i];
      } else {
        wmma::mma_sync(acc[t], a_lo, b_hi, acc[t]);  // small terms first
        wmma::mma_sync(acc[t], a_hi, b_lo, acc[t]);
        wmma::mma_sync(acc[t], a_hi, b_hi, acc[t]);
      }
    }
  }
}

}  // namespace prime::kernels::detail::tf32x3
