// Products of fp32 operands on the bf16 tensor cores (bf16_tiles.cuh) at more than bf16's accuracy.
// An fp32 value a is carried as a_hi = bf16(a) and a_lo = bf16(a - a_hi): 16 of its 24 significant
// bits. A product's step takes a_lo b_hi + a_hi b_hi (Terms = 2: the left operand split, the right
// one bf16 as it is, e.g. bf16 keys) or a_lo b_hi + a_hi b_lo + a_hi b_hi (Terms = 3, bf16x3: both
// split; the dropped a_lo b_lo and the bits past each lo are ~2^-17 of each term: ~1e-5 relative
// after GKA's 30 iterations, about ten times what fp32 products or 3xTF32 leave, inside the fp32
// tests' 1e-4, at twice 3xTF32's rate), accumulated in fp32.
// Terms = 1 (both bf16, one MMA) is bf16_tiles' row_block_product.
#pragma once

#include "kernels/common/bf16_tiles.cuh"

namespace prime::kernels::detail::bf16_tiles {

// Whether a product of Terms MMAs per step splits its left (A) / right (B) operand.
template <int Terms>
constexpr bool splits_left() {
  return Terms >= 2;
}
template <int Terms>
constexpr bool splits_right() {
  return Terms == 3;
}

// A shared bf16 matrix [rows][ld] as its hi part and, where split, its lo part in the same layout
// (lo null where not split).
struct SplitMatrix {
  Bf16* hi;
  Bf16* lo;
};

// The pair (a0, a1) as bf16x2 bits (a0 in the low half): a split value's hi part; and its lo part
// bf16(a - hi) from hi (a - hi is exact in fp32).
__device__ __forceinline__ uint32_t bf16_pair(float a0, float a1) {
  const __nv_bfloat162 packed = __floats2bfloat162_rn(a0, a1);
  return *reinterpret_cast<const uint32_t*>(&packed);
}
// bf16x2 bits (as bf16_pair packs them) as two fp32 values by their bits: one shift and one mask, exact as the
// bf16 conversion (which, through __nv_bfloat162, takes two byte permutes and two shifts).
__device__ __forceinline__ float2 bf16_pair_values(uint32_t pair) {
  return make_float2(__uint_as_float(pair << 16), __uint_as_float(pair & 0xffff0000u));
}
__device__ __forceinline__ uint32_t bf16_residual(float a0, float a1, uint32_t hi) {
  const float2 rounded = bf16_pair_values(hi);
  return bf16_pair(a0 - rounded.x, a1 - rounded.y);
}

// Values held as an accumulator's elements (as mma.sync or wgmma lays them out) split into the bf16 A fragments of
// Steps depth steps of 16: step s is elements 8 s .. 8 s + 7, register r the pair (8 s + 2 r, 8 s + 2 r + 1); hi =
// bf16(x) and lo = bf16(x - hi).
template <int Steps>
__device__ __forceinline__ void split_fragments(const float* x, uint32_t (&hi)[Steps][4], uint32_t (&lo)[Steps][4]) {
#pragma unroll
  for (int s = 0; s < Steps; ++s) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float a = x[8 * s + 2 * r], b = x[8 * s + 2 * r + 1];
      hi[s][r] = bf16_pair(a, b);
      lo[s][r] = bf16_residual(a, b, hi[s][r]);
    }
  }
}

// Stores the adjacent pair (a0, a1) at element `at` of m: hi = bf16(a), and with Split lo =
// bf16(a - hi).
template <bool Split>
__device__ __forceinline__ void store_split(const SplitMatrix& m, int at, float a0, float a1) {
  const uint32_t hi = bf16_pair(a0, a1);
  *reinterpret_cast<uint32_t*>(m.hi + at) = hi;
  if constexpr (Split) *reinterpret_cast<uint32_t*>(m.lo + at) = bf16_residual(a0, a1, hi);
}

// row_block_product (bf16_tiles.cuh) on split operands: acc[t] += A[16 rows at a_offset, 0:depth]
// B[0:depth, col0 + 16 t : +16] for t < NT, where A's rows start at element a_offset of a (row
// stride lda) and B is b row-major (ldb) or, with Transposed, B = S^T for b = S [cols][depth]
// (ldb). a is split for Terms >= 2, b for Terms = 3; each step adds its small terms first.
template <int Terms, int NT, bool Transposed = false>
__device__ __forceinline__ void split_row_block_product(Acc (&acc)[NT], const SplitMatrix& a, int a_offset, int lda,
                                                        int depth, const SplitMatrix& b, int ldb, int col0) {
  static_assert(Terms >= 1 && Terms <= 3, "a split product takes one to three MMAs per step");
  for (int k0 = 0; k0 < depth; k0 += 16) {
    FragA a_hi, a_lo;
    load_a(a_hi, a.hi + a_offset + k0, lda);
    if constexpr (splits_left<Terms>()) load_a(a_lo, a.lo + a_offset + k0, lda);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int at = Transposed ? (col0 + 16 * t) * ldb + k0 : k0 * ldb + col0 + 16 * t;
      FragB b_hi;
      if constexpr (Transposed)
        load_b_t(b_hi, b.hi + at, ldb);
      else
        load_b(b_hi, b.hi + at, ldb);
      if constexpr (splits_left<Terms>()) mma(acc[t], a_lo, b_hi);
      if constexpr (splits_right<Terms>()) {
        FragB b_lo;
        if constexpr (Transposed)
          load_b_t(b_lo, b.lo + at, ldb);
        else
          load_b(b_lo, b.lo + at, ldb);
        mma(acc[t], a_hi, b_lo);
      }
      mma(acc[t], a_hi, b_hi);
    }
  }
}

}  // namespace prime::kernels::detail::bf16_tiles
