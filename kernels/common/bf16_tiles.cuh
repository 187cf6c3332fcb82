// Device pieces of the chunked forms on bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation):
// gdn_chunk's bf16 fused forward, ssd_chunk's bf16 forward and backward. A 16 x 16 tile is two
// m16n8 instructions side by side; operands come from shared memory by ldmatrix (one instruction
// per 16 x 16 fragment, transposed in flight where the source is stored the other way round).
// Shared bf16 matrices are row-major with (width + 8) elements per row (ld_of): 16-byte aligned
// rows that fall on different banks for ldmatrix. Fragment layouts (PTX ISA, g = lane / 4,
// t = lane % 4): an A fragment's registers hold (rows, depth) = (g, 2t..+1), (g + 8, 2t..+1),
// (g, 8 + 2t..+1), (g + 8, 8 + 2t..+1); a B fragment's (depth, column) = (2t..+1, g), (8 + 2t..+1,
// g), then the same for columns 8 + g; an accumulator's x[4h + 2i + e] is (g + 8i, 8h + 2t + e).
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/cp_async.cuh"
#include "kernels/common/ldmatrix.cuh"

namespace prime::kernels::detail::bf16_tiles {

using Bf16 = __nv_bfloat16;

struct FragA {  // A operand, 16 rows x 16 depth
  uint32_t x[4];
};
struct FragB {  // B operand, 16 depth x 16 columns: x[0..1] columns 0..7, x[2..3] columns 8..15
  uint32_t x[4];
};
struct Acc {  // fp32 accumulator, 16 x 16
  static constexpr int num_elements = 8;
  float x[8];
};

constexpr int kScratchLd = 20;                      // a warp's fp32 scratch tile: [16][20]
constexpr int kScratchBytes = 16 * kScratchLd * 4;  // 1280

__host__ __device__ constexpr int ld_of(int width) { return width + 8; }

__device__ __forceinline__ void fill(Acc& acc, float value) {
#pragma unroll
  for (int e = 0; e < 8; ++e) acc.x[e] = value;
}

// Lane l's addresses for an x4 ldmatrix of the 16 x 16 block at p (row stride ld): matrix j = l / 8
// at row offset 8 (j % 2) and column offset 8 (j / 2), or the other way round when Swap.
template <bool Swap>
__device__ __forceinline__ uint32_t block_address(const Bf16* p, int ld) {
  const int lane = threadIdx.x % 32, i = lane % 8, j = lane / 8;
  const int row = Swap ? 8 * (j / 2) : 8 * (j % 2), col = Swap ? 8 * (j % 2) : 8 * (j / 2);
  return shared_address(p + (row + i) * ld + col);
}

// A[r][k] = p[r * ld + k] (shared memory).
__device__ __forceinline__ void load_a(FragA& f, const Bf16* p, int ld) {
  ldmatrix_x4(f.x, block_address<false>(p, ld));
}
// A[r][k] = p[k * ld + r]: A stored transposed (shared memory).
__device__ __forceinline__ void load_a_t(FragA& f, const Bf16* p, int ld) {
  ldmatrix_x4_transposed(f.x, block_address<true>(p, ld));
}
// B[k][n] = p[k * ld + n] (shared memory).
__device__ __forceinline__ void load_b(FragB& f, const Bf16* p, int ld) {
  ldmatrix_x4_transposed(f.x, block_address<false>(p, ld));
}
// B[k][n] = p[n * ld + k]: B stored transposed (shared memory).
__device__ __forceinline__ void load_b_t(FragB& f, const Bf16* p, int ld) {
  ldmatrix_x4(f.x, block_address<true>(p, ld));
}

// The lane's word (g, 2t..+1) of the 8 x 8 block at p (global memory, read-only).
__device__ __forceinline__ uint32_t global_word(const Bf16* p, int ld) {
  const int lane = threadIdx.x % 32;
  return __ldg(reinterpret_cast<const unsigned int*>(p + (lane / 4) * ld + 2 * (lane % 4)));
}

__device__ __forceinline__ uint32_t transpose_8x8(uint32_t word) {
  uint32_t out;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(out) : "r"(word));
  return out;
}

// B[k][n] = p[n * ld + k], p in global memory.
__device__ __forceinline__ void load_b_t_global(FragB& f, const Bf16* p, int ld) {
#pragma unroll
  for (int j = 0; j < 4; ++j) f.x[j] = global_word(p + 8 * (j / 2) * ld + 8 * (j % 2), ld);
}
// B[k][n] = p[k * ld + n], p in global memory (each 8 x 8 block read as stored, then transposed).
__device__ __forceinline__ void load_b_global(FragB& f, const Bf16* p, int ld) {
#pragma unroll
  for (int j = 0; j < 4; ++j) f.x[j] = transpose_8x8(global_word(p + 8 * (j % 2) * ld + 8 * (j / 2), ld));
}

__device__ __forceinline__ void mma_m16n8k16(float* d, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// acc += a b
__device__ __forceinline__ void mma(Acc& acc, const FragA& a, const FragB& b) {
  mma_m16n8k16(acc.x, a.x, b.x[0], b.x[1]);
  mma_m16n8k16(acc.x + 4, a.x, b.x[2], b.x[3]);
}

// Calls emit(row, col, x0, x1) for each pair of adjacent elements (row, col), (row, col + 1) the
// lane holds.
template <typename Emit>
__device__ __forceinline__ void for_each_pair(const Acc& tile, Emit&& emit) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int e = 0; e < 8; e += 2) emit(g + 8 * ((e / 2) % 2), 2 * t + 8 * (e / 4), tile.x[e], tile.x[e + 1]);
}

// acc = the 16 x 16 fp32 tile at p (row stride ld; 8-byte aligned rows), and back.
__device__ __forceinline__ void load_acc(Acc& acc, const float* p, int ld) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int e = 0; e < 8; e += 2) {
    const float2 pair = *reinterpret_cast<const float2*>(p + (g + 8 * ((e / 2) % 2)) * ld + 2 * t + 8 * (e / 4));
    acc.x[e] = pair.x;
    acc.x[e + 1] = pair.y;
  }
}
__device__ __forceinline__ void store_acc(float* p, const Acc& acc, int ld) {
  for_each_pair(acc, [&](int row, int col, float x0, float x1) {
    *reinterpret_cast<float2*>(p + row * ld + col) = make_float2(x0, x1);
  });
}

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

// The tile as rows of 8 through the warp's fp32 scratch: lane l gets row l / 2, columns
// 8 (l % 2)..+8 in x.
__device__ __forceinline__ void tile_rows(const Acc& tile, float* scratch, float* x) {
  store_acc(scratch, tile, kScratchLd);
  __syncwarp();
  const int lane = threadIdx.x % 32, row = lane / 2, col = (lane % 2) * 8;
  const float4 low = *reinterpret_cast<const float4*>(scratch + row * kScratchLd + col);
  const float4 high = *reinterpret_cast<const float4*>(scratch + row * kScratchLd + col + 4);
  x[0] = low.x, x[1] = low.y, x[2] = low.z, x[3] = low.w;
  x[4] = high.x, x[5] = high.y, x[6] = high.z, x[7] = high.w;
  __syncwarp();
}

// tile_rows, then emit(row, col, x).
template <typename Emit>
__device__ __forceinline__ void emit_tile(const Acc& tile, float* scratch, Emit&& emit) {
  float x[8];
  tile_rows(tile, scratch, x);
  const int lane = threadIdx.x % 32;
  emit(lane / 2, (lane % 2) * 8, x);
}

// Calls body(row, col) for the 16-byte vectors (8 elements at col) of a [ROWS][WIDTH] matrix, the
// block's THREADS threads taking them round robin (the trip count known at compile time).
template <int ROWS, int WIDTH, int THREADS, typename Body>
__device__ __forceinline__ void for_each_vector(Body&& body) {
  constexpr int kVectors = WIDTH / 8, kTotal = ROWS * kVectors;
#pragma unroll
  for (int i = 0; i < (kTotal + THREADS - 1) / THREADS; ++i) {
    const int index = static_cast<int>(threadIdx.x) + i * THREADS;
    if (kTotal % THREADS != 0 && index >= kTotal) break;
    body(index / kVectors, (index % kVectors) * 8);
  }
}

// dst [ROWS][WIDTH] (row stride ld_of(WIDTH)) <- src (row stride src_ld), asynchronously; rows at
// or past `valid_rows` are zeros (their source is not read). THREADS threads call it. An L2 cache policy
// may follow (cp_async.cuh's l2_evict_first_policy, for rows read once).
template <int ROWS, int WIDTH, int THREADS, typename... Policy>
__device__ __forceinline__ void copy_async(Bf16* dst, const Bf16* src, size_t src_ld, int valid_rows = ROWS,
                                           Policy... policy) {
  static_assert(sizeof...(Policy) <= 1, "at most one cache policy");
  for_each_vector<ROWS, WIDTH, THREADS>([&](int row, int col) {
    const bool valid = row < valid_rows;
    cp_async16_or_zero(dst + row * ld_of(WIDTH) + col, src + (valid ? row * src_ld + col : 0), valid, policy...);
  });
}

// dst [ROWS][WIDTH] <- src rows (row stride src_ld elements, 16-byte aligned), rows at or past
// `valid_rows` zeros; synchronous 16-byte loads through the read-only cache.
template <int ROWS, int WIDTH, int THREADS>
__device__ __forceinline__ void load_rows(Bf16* dst, const Bf16* src, size_t src_ld, int valid_rows) {
  for_each_vector<ROWS, WIDTH, THREADS>([&](int row, int col) {
    uint4 value = make_uint4(0, 0, 0, 0);
    if (row < valid_rows) value = __ldg(reinterpret_cast<const uint4*>(src + row * src_ld + col));
    *reinterpret_cast<uint4*>(dst + row * ld_of(WIDTH) + col) = value;
  });
}

// x[t][:] *= factor(t) for the ROWS rows of a [ROWS][WIDTH] shared matrix, in place.
template <int ROWS, int WIDTH, int THREADS, typename Factor>
__device__ __forceinline__ void scale_rows(Bf16* x, Factor factor) {
  for_each_vector<ROWS, WIDTH, THREADS>([&](int t, int i) {
    uint4* at = reinterpret_cast<uint4*>(x + t * ld_of(WIDTH) + i);
    float values[8];
    unpack8(*at, values);
    const float f = factor(t);
#pragma unroll
    for (int e = 0; e < 8; ++e) values[e] *= f;
    *at = pack8(values);
  });
}

// acc = X[16 rows at row0] Y[16 rows at col0]^T over depth D, X and Y [rows][D] in shared memory.
template <int D>
__device__ __forceinline__ void gram_tile(Acc& acc, const Bf16* x, const Bf16* y, int row0, int col0) {
  fill(acc, 0.0f);
#pragma unroll
  for (int k0 = 0; k0 < D; k0 += 16) {
    FragA a;
    FragB bt;
    load_a(a, x + row0 * ld_of(D) + k0, ld_of(D));
    load_b_t(bt, y + col0 * ld_of(D) + k0, ld_of(D));
    mma(acc, a, bt);
  }
}

// acc[t] += A[16 rows, 0:depth] B[0:depth, col0 + 16 t : +16] for t < NT; A (lda) points at its
// row block. B is row-major (ldb), or with Transposed B = S^T for a row-major S [cols][depth]
// (ldb). A lower-triangular A's row block r needs depth 16 (r + 1) only. Shared memory.
template <int NT, bool Transposed = false>
__device__ __forceinline__ void row_block_product(Acc (&acc)[NT], const Bf16* a_rows, int lda, int depth,
                                                  const Bf16* b, int ldb, int col0) {
  for (int k0 = 0; k0 < depth; k0 += 16) {
    FragA a;
    load_a(a, a_rows + k0, lda);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      FragB bm;
      if constexpr (Transposed)
        load_b_t(bm, b + (col0 + 16 * t) * ldb + k0, ldb);
      else
        load_b(bm, b + k0 * ldb + col0 + 16 * t, ldb);
      mma(acc[t], a, bm);
    }
  }
}

// acc[t] += A[16 rows, k_begin:depth] B[k_begin:depth, col0 + 16 t : +16] for t < NT, A stored transposed:
// A[r][k] = a_t[k * lda + r] (a_t points at its row block's first column; T^T from T's rows), B row-major
// (ldb). Shared memory. A triangular A may start its depth at k_begin.
template <int NT>
__device__ __forceinline__ void transposed_row_block_product(Acc (&acc)[NT], const Bf16* a_t, int lda, int k_begin,
                                                             int depth, const Bf16* b, int ldb, int col0) {
  for (int k0 = k_begin; k0 < depth; k0 += 16) {
    FragA a;
    load_a_t(a, a_t + k0 * lda, lda);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      FragB bm;
      load_b(bm, b + k0 * ldb + col0 + 16 * t, ldb);
      mma(acc[t], a, bm);
    }
  }
}

// The lower triangle of X Y^T for a chunk of 64 steps, X and Y [64][D] in shared memory. WARPS
// warps (8 or 16) take its 16 tiles round robin: warp w tile f = w, w + WARPS, ... at row block
// f % 4, column block f / 4 (the tiles above the diagonal as zeros, unformed), and call
// emit(i, j, x0, x1) for each pair of adjacent elements (i, j), (i, j + 1) they hold.
template <int D, int WARPS = 8, typename Emit>
__device__ __forceinline__ void lower_gram_pairs(const Bf16* x, const Bf16* y, Emit&& emit) {
  static_assert(16 % WARPS == 0, "16 tiles among the warps");
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int f = warp; f < 16; f += WARPS) {
    const int r = f % 4, c = f / 4;
    Acc acc;
    if (c <= r)
      gram_tile<D>(acc, x, y, 16 * r, 16 * c);
    else
      fill(acc, 0.0f);
    for_each_pair(acc, [&](int row, int col, float x0, float x1) { emit(16 * r + row, 16 * c + col, x0, x1); });
  }
}

// out [64][ldo] (bf16) = (X Y^T) o L for a chunk of 64 steps, L_ij = weight(j) e^{gamma_i - gamma_j}
// for j <= i and 0 above (gamma: float64 prefix sums, so every exponent is <= 0), X and Y
// [64][D] in shared memory, written from the registers (lower_gram_pairs, WARPS warps).
template <int D, int WARPS = 8, typename Weight>
__device__ __forceinline__ void decayed_causal_scores(Bf16* out, int ldo, const Bf16* x, const Bf16* y,
                                                      const double* gamma, Weight&& weight) {
  lower_gram_pairs<D, WARPS>(x, y, [&](int i, int j, float x0, float x1) {
    const double gi = gamma[i];
    x0 = j <= i ? weight(j) * expf(static_cast<float>(gi - gamma[j])) * x0 : 0.0f;
    x1 = j + 1 <= i ? weight(j + 1) * expf(static_cast<float>(gi - gamma[j + 1])) * x1 : 0.0f;
    *reinterpret_cast<__nv_bfloat162*>(out + i * ldo + j) = __floats2bfloat162_rn(x0, x1);
  });
}

}  // namespace prime::kernels::detail::bf16_tiles
