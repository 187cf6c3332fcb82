// Raw m16n8k8 TF32 tensor-core helpers of kernels/gka_solve's mma kernels (forward and reverse
// sweep): fragment loads (ldmatrix where the operand's rows are contiguous in shared memory,
// element loads where it is read transposed), the hi/lo split and the 3xTF32 product
// a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi with fp32 accumulation, which keeps fp32 accuracy. The
// instruction and its fragment layouts: kernels/common/mma_tf32.cuh. The step layer below (depth_step
// on) runs the same products on bf16x3 (m16n8k16) from the same loads, for the reverse sweep.
#pragma once

#include <cstdint>

#include "kernels/common/bf16_split_tiles.cuh"
#include "kernels/common/ldmatrix.cuh"
#include "kernels/common/mma_tf32.cuh"
#include "kernels/common/tf32_split.cuh"

namespace prime::kernels::detail::gka_mma {

// hi = tf32(v), lo = tf32(v - hi), both rounded to nearest (kernels/common/tf32_split.cuh). Passing
// v - hi unrounded (the MMA truncates it) would keep the norm of x as close to float64 (1.2e-7 in a
// float64 emulation), but truncation is biased: in the whole-hybrid test the gradients that sum x
// over every token (GKA's alpha_proj.bias, through q + alpha (x - q)) came out 4-5x further from
// float64 than the torch-ops forms' (kernels/README.md, v4).
__device__ __forceinline__ void split(uint32_t v, uint32_t& hi, uint32_t& lo) { split_tf32_bits(v, hi, lo); }

// The A operand (rows row0..row0+15, columns k0..k0+7 of a row-major matrix), split: hi[i], lo[i]
// hold the m16n8k8 fragment's a_i = (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4).
struct FragA {
  uint32_t hi[4], lo[4];
};

// The fragment's elements unsplit (raw fp32 bits), and split.
__device__ __forceinline__ void load_a_raw(uint32_t (&r)[4], const float* base, int ld, int row0, int k0, int lane) {
  const int block = lane >> 3;
  ldmatrix_x4(r, shared_address(base + (row0 + (lane & 7) + 8 * (block & 1)) * ld + k0 + 4 * (block >> 1)));
}
__device__ __forceinline__ void load_a(FragA& a, const float* base, int ld, int row0, int k0, int lane) {
  uint32_t r[4];
  load_a_raw(r, base, ld, row0, k0, lane);
#pragma unroll
  for (int i = 0; i < 4; ++i) split(r[i], a.hi[i], a.lo[i]);
}

// The B operands of two n8 tiles (columns n0..n0+15, depth k0..k0+7) from B^T stored row-major
// ([n][k]), split: tile u's fragment is b_0 = hi[2u], b_1 = hi[2u + 1] (and lo likewise).
struct FragB2 {
  uint32_t hi[4], lo[4];
};

__device__ __forceinline__ void load_b2_raw(uint32_t (&r)[4], const float* transposed, int ld, int n0, int k0,
                                            int lane) {
  const int block = lane >> 3;
  ldmatrix_x4(r, shared_address(transposed + (n0 + (lane & 7) + 8 * (block >> 1)) * ld + k0 + 4 * (block & 1)));
}
__device__ __forceinline__ void load_b2(FragB2& b, const float* transposed, int ld, int n0, int k0, int lane) {
  uint32_t r[4];
  load_b2_raw(r, transposed, ld, n0, k0, lane);
#pragma unroll
  for (int i = 0; i < 4; ++i) split(r[i], b.hi[i], b.lo[i]);
}


// d += a b (one n8 tile: b_hi, b_lo point at its two fragment registers), 3xTF32 with the small
// terms first (as tf32x3::warp_gemm).
__device__ __forceinline__ void mma3(float (&d)[4], const FragA& a, const uint32_t* b_hi, const uint32_t* b_lo) {
  mma_tf32x3(d, a.hi, a.lo, b_hi, b_lo);
}

// acc += a b with the product's three MMAs summed from zero and then added on the CUDA cores
// (fp32, round to nearest): the tensor cores' accumulation truncates, which over a long running
// sum (the reverse sweep's gradients) costs digits (kernels/README.md, gka_solve v3.1).
__device__ __forceinline__ void mma3_rounded(float (&acc)[4], const FragA& a, const uint32_t* b_hi,
                                             const uint32_t* b_lo) {
  float step[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  mma3(step, a, b_hi, b_lo);
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i] += step[i];
}

// The A operand read transposed: A[m][k] = base[k * ld + m], rows m0..m0+15, depth k0..k0+7.
__device__ __forceinline__ void load_a_transposed_raw(uint32_t (&r)[4], const float* base, int ld, int m0, int k0,
                                                      int lane) {
  const int g = lane >> 2, t = lane & 3;
  const float* p = base + (k0 + t) * ld + m0 + g;
  const float v[4] = {p[0], p[8], p[4 * ld], p[4 * ld + 8]};
#pragma unroll
  for (int i = 0; i < 4; ++i) r[i] = __float_as_uint(v[i]);
}
__device__ __forceinline__ void load_a_transposed(FragA& a, const float* base, int ld, int m0, int k0, int lane) {
  uint32_t r[4];
  load_a_transposed_raw(r, base, ld, m0, k0, lane);
#pragma unroll
  for (int i = 0; i < 4; ++i) split(r[i], a.hi[i], a.lo[i]);
}

// The B operand of one n8 tile from a k-major matrix, B[k][n] = base[k * ld + n] (columns
// n0..n0+7, depth k0..k0+7), split; rows k0 + t and k0 + t + 4 (this lane's) are multiplied by
// scale0 and scale1 first.
__device__ __forceinline__ void load_b_rows_raw(uint32_t (&r)[2], const float* base, int ld, int n0, int k0, int lane,
                                                float scale0 = 1.0f, float scale1 = 1.0f) {
  const int g = lane >> 2, t = lane & 3;
  const float* p = base + (k0 + t) * ld + n0 + g;
  r[0] = __float_as_uint(p[0] * scale0);
  r[1] = __float_as_uint(p[4 * ld] * scale1);
}
__device__ __forceinline__ void load_b_rows(uint32_t (&hi)[2], uint32_t (&lo)[2], const float* base, int ld, int n0,
                                            int k0, int lane, float scale0 = 1.0f, float scale1 = 1.0f) {
  uint32_t r[2];
  load_b_rows_raw(r, base, ld, n0, k0, lane, scale0, scale1);
  split(r[0], hi[0], lo[0]);
  split(r[1], hi[1], lo[1]);
}

// The same two n8 tiles from B^T stored already split ([n][k] row-major hi and lo parts at one
// offset): an operand that stays in shared memory for the whole solve is split once, not at
// every read.
__device__ __forceinline__ void load_b2_presplit(FragB2& b, const float* hi, const float* lo, int ld, int n0, int k0,
                                                 int lane) {
  const int block = lane >> 3;
  const int offset = (n0 + (lane & 7) + 8 * (block >> 1)) * ld + k0 + 4 * (block & 1);
  ldmatrix_x4(b.hi, shared_address(hi + offset));
  ldmatrix_x4(b.lo, shared_address(lo + offset));
}

// ---- One depth step in either arithmetic: kBf16 false, 3xTF32 on m16n8k8 (8 deep); true, bf16x3 on
// m16n8k16 (16 deep; kernels/common/bf16_split_tiles.cuh's Terms = 3: each operand carried as hi =
// bf16(x) and lo = bf16(x - hi), the products a_lo b_hi + a_hi b_lo + a_hi b_hi, twice the TF32 rate,
// ~1e-5 of float64 after GKA's 30 iterations: experiments/gka_bf16_solve). A bf16 step is built from
// the element loads of the two TF32 steps at k0 and k0 + 8 (the same addresses and bank pattern): its
// depth slots 2t, 2t + 1, 2t + 8, 2t + 9 hold depths t, t + 4, 8 + t, 12 + t, a permutation of the 16
// depths that A and B share, so the product is the same.
template <bool kBf16>
constexpr int depth_step() {
  return kBf16 ? 16 : 8;
}

// hi = bf16 pair of (x0, x1), lo = the pair of their residuals (raw fp32 bits in; x0 in the low half).
__device__ __forceinline__ void split_bf16(uint32_t x0, uint32_t x1, uint32_t& hi, uint32_t& lo) {
  const float a0 = __uint_as_float(x0), a1 = __uint_as_float(x1);
  hi = bf16_tiles::bf16_pair(a0, a1);
  lo = bf16_tiles::bf16_residual(a0, a1, hi);
}

// An m16n8k16 A fragment from two m16n8k8 ones' raw elements (each (g, t), (g + 8, t), (g, t + 4),
// (g + 8, t + 4)): registers (g, slots 2t..), (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..).
__device__ __forceinline__ void a_from_steps(FragA& a, const uint32_t (&r0)[4], const uint32_t (&r1)[4]) {
  split_bf16(r0[0], r0[2], a.hi[0], a.lo[0]);
  split_bf16(r0[1], r0[3], a.hi[1], a.lo[1]);
  split_bf16(r1[0], r1[2], a.hi[2], a.lo[2]);
  split_bf16(r1[1], r1[3], a.hi[3], a.lo[3]);
}

// An A fragment for the step from raw(r, k), which loads the m16n8k8 fragment's raw elements at depth k:
// split as they are (TF32), or two of them (k0, k0 + 8) combined (bf16x3).
template <bool kBf16, class Raw>
__device__ __forceinline__ void a_step(FragA& a, int k0, const Raw& raw) {
  uint32_t r0[4];
  raw(r0, k0);
  if constexpr (kBf16) {
    uint32_t r1[4];
    raw(r1, k0 + 8);
    a_from_steps(a, r0, r1);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) split(r0[i], a.hi[i], a.lo[i]);
  }
}

// A row-major (ldmatrix) or read transposed (element loads), split for the step's arithmetic.
template <bool kBf16>
__device__ __forceinline__ void load_a_step(FragA& a, const float* base, int ld, int row0, int k0, int lane) {
  a_step<kBf16>(a, k0, [&](uint32_t(&r)[4], int k) { load_a_raw(r, base, ld, row0, k, lane); });
}
template <bool kBf16>
__device__ __forceinline__ void load_a_transposed_step(FragA& a, const float* base, int ld, int m0, int k0, int lane) {
  a_step<kBf16>(a, k0, [&](uint32_t(&r)[4], int k) { load_a_transposed_raw(r, base, ld, m0, k, lane); });
}

// Two n8 tiles of B from B^T row-major (load_b2's layout): tile u's registers are hi/lo [2u, 2u + 1].
template <bool kBf16>
__device__ __forceinline__ void load_b2_step(FragB2& b, const float* transposed, int ld, int n0, int k0, int lane) {
  if constexpr (kBf16) {
    uint32_t r0[4], r1[4];
    load_b2_raw(r0, transposed, ld, n0, k0, lane);
    load_b2_raw(r1, transposed, ld, n0, k0 + 8, lane);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      split_bf16(r0[2 * u], r0[2 * u + 1], b.hi[2 * u], b.lo[2 * u]);
      split_bf16(r1[2 * u], r1[2 * u + 1], b.hi[2 * u + 1], b.lo[2 * u + 1]);
    }
  } else {
    load_b2(b, transposed, ld, n0, k0, lane);
  }
}

// One n8 tile of a k-major B (load_b_rows' layout), the lane's i-th depth row of the step (row k0 + t +
// 4 i: i < 2, or < 4 on bf16x3) scaled by scale(i).
template <bool kBf16, class Scale>
__device__ __forceinline__ void load_b_rows_step(uint32_t (&hi)[2], uint32_t (&lo)[2], const float* base, int ld,
                                                 int n0, int k0, int lane, const Scale& scale) {
  if constexpr (kBf16) {
    uint32_t r0[2], r1[2];
    load_b_rows_raw(r0, base, ld, n0, k0, lane, scale(0), scale(1));
    load_b_rows_raw(r1, base, ld, n0, k0 + 8, lane, scale(2), scale(3));
    split_bf16(r0[0], r0[1], hi[0], lo[0]);
    split_bf16(r1[0], r1[1], hi[1], lo[1]);
  } else {
    load_b_rows(hi, lo, base, ld, n0, k0, lane, scale(0), scale(1));
  }
}
struct NoScale {
  __device__ __forceinline__ float operator()(int) const { return 1.0f; }
};

// d += a b for one n8 tile in the step's arithmetic (small terms first), and its rounded form
// (mma3_rounded: the step summed from zero, then added on the CUDA cores).
template <bool kBf16>
__device__ __forceinline__ void mma3_step(float (&d)[4], const FragA& a, const uint32_t* b_hi, const uint32_t* b_lo) {
  if constexpr (kBf16) {
    bf16_tiles::mma_m16n8k16(d, a.lo, b_hi[0], b_hi[1]);
    bf16_tiles::mma_m16n8k16(d, a.hi, b_lo[0], b_lo[1]);
    bf16_tiles::mma_m16n8k16(d, a.hi, b_hi[0], b_hi[1]);
  } else {
    mma3(d, a, b_hi, b_lo);
  }
}
template <bool kBf16>
__device__ __forceinline__ void mma3_rounded_step(float (&acc)[4], const FragA& a, const uint32_t* b_hi,
                                                  const uint32_t* b_lo) {
  float step[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  mma3_step<kBf16>(step, a, b_hi, b_lo);
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i] += step[i];
}

// acc[0..2 pairs) += A[row0.., 0:depth] B[0:depth, n0..n0 + 16 pairs) with A row-major in shared
// memory (ldmatrix); load_b(b, n0 + 16 pair, k0) fills a FragB2 for the step; kRounded: each k-step's
// product rounded into acc (mma3_rounded); kBf16: bf16x3 steps (depth a multiple of 16).
template <int kPairs, bool kRounded, bool kBf16, class LoadB>
__device__ __forceinline__ void warp_product_with(float (&acc)[2 * kPairs][4], const float* A, int lda, int row0,
                                                  int n0, int depth, int lane, const LoadB& load_b) {
  for (int k0 = 0; k0 < depth; k0 += depth_step<kBf16>()) {
    FragA a;
    load_a_step<kBf16>(a, A, lda, row0, k0, lane);
#pragma unroll
    for (int pair = 0; pair < kPairs; ++pair) {
      FragB2 b;
      load_b(b, n0 + 16 * pair, k0);
      if constexpr (kRounded) {
        mma3_rounded_step<kBf16>(acc[2 * pair], a, b.hi, b.lo);
        mma3_rounded_step<kBf16>(acc[2 * pair + 1], a, b.hi + 2, b.lo + 2);
      } else {
        mma3_step<kBf16>(acc[2 * pair], a, b.hi, b.lo);
        mma3_step<kBf16>(acc[2 * pair + 1], a, b.hi + 2, b.lo + 2);
      }
    }
  }
}

// acc[0..kTiles) += A[row0.., 0:depth] B[0:depth, n0..n0 + 8 kTiles) with A row-major (ldmatrix)
// and B k-major, B[k][n] = base[k * ldb + n] (element loads, load_b_rows); kRounded, kBf16 as above.
template <int kTiles, bool kRounded, bool kBf16 = false>
__device__ __forceinline__ void warp_product_rows(float (&acc)[kTiles][4], const float* A, int lda, int row0,
                                                  const float* B, int ldb, int n0, int depth, int lane) {
  for (int k0 = 0; k0 < depth; k0 += depth_step<kBf16>()) {
    FragA a;
    load_a_step<kBf16>(a, A, lda, row0, k0, lane);
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      uint32_t b_hi[2], b_lo[2];
      load_b_rows_step<kBf16>(b_hi, b_lo, B, ldb, n0 + 8 * j, k0, lane, NoScale{});
      if constexpr (kRounded)
        mma3_rounded_step<kBf16>(acc[j], a, b_hi, b_lo);
      else
        mma3_step<kBf16>(acc[j], a, b_hi, b_lo);
    }
  }
}

// warp_product_with B^T row-major in shared memory (ldmatrix, split at each read).
template <int kPairs, bool kRounded = false, bool kBf16 = false>
__device__ __forceinline__ void warp_product(float (&acc)[2 * kPairs][4], const float* A, int lda, int row0,
                                             const float* transposed, int ldt, int n0, int depth, int lane) {
  warp_product_with<kPairs, kRounded, kBf16>(acc, A, lda, row0, n0, depth, lane, [&](FragB2& b, int n, int k0) {
    load_b2_step<kBf16>(b, transposed, ldt, n, k0, lane);
  });
}

// warp_product_with B^T stored split (load_b2_presplit).
template <int kPairs>
__device__ __forceinline__ void warp_product_presplit(float (&acc)[2 * kPairs][4], const float* A, int lda, int row0,
                                                      const float* hi, const float* lo, int ldt, int n0, int depth,
                                                      int lane) {
  warp_product_with<kPairs, false, false>(acc, A, lda, row0, n0, depth, lane, [&](FragB2& b, int n, int k0) {
    load_b2_presplit(b, hi, lo, ldt, n, k0, lane);
  });
}

}  // namespace prime::kernels::detail::gka_mma
