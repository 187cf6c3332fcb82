// CUDA kernel of kernels/chunk_gemm (see chunk_gemm.h for the op). One block of 4 warps per 64 x 64 tile of
// one batch entry's output; each warp owns a 32 x 32 block of it (2 x 4 m16n8 fragments). The depth streams
// through shared memory in slabs of 32 (64 where both operands are bf16 in memory), double buffered with
// cp.async (zero-filled past the operands' edges), each operand copied in its own orientation: a transposed
// view costs no copy, only another fragment addressing. The row padding (4 floats where rows run along the
// depth, 8 where they run along m or n) makes every fragment's element loads free of bank conflicts in both
// orientations. Each element is split into TF32 hi and lo as it is loaded (kernels/common/tf32_split.cuh) and
// every k-step's three MMAs are summed from zero and added to the fp32 accumulator on the CUDA cores: the
// tensor cores' truncating accumulation never acts on the running sum (kernels/README.md, gka_solve v3.1).
// With kBf16 each element is rounded to bf16 as it is loaded into the m16n8k16 fragments and one bf16 MMA per
// 16-deep step accumulates in place (a bf16 product's error is the operands' rounding; the accumulation's is
// far below it). In that mode an operand may be bf16 in memory: it is staged as bf16 (8 elements a 16-byte
// copy; rows of 32 + 8 or 64 + 8 elements, whose fragment reads, two lanes to a 4-byte word, meet no bank
// twice) and its pairs are packed from the stage's bits, half the fp32 operand's traffic and no rounding. A
// sum of products (chunk_gemm_sum) runs its terms one after another through the same stages, each term's
// accumulator folded into a running sum in registers (alpha, the column scale, then the sum so far: the
// operations chunk_gemm's accumulating calls make on out), and out is written once, in fp32 or, for a bf16
// product's operand, in bf16. In a sum each warp copies its share of a term's epilogue operands (its
// 32 x 32 block of dot_with, its 32 row scales) into shared memory by cp.async when the term's first stage is
// loaded, so they arrive while the term's products run instead of being waited on in the epilogue.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/chunk_gemm/chunk_gemm_launch.h"
#include "kernels/common/bf16_split_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/ldmatrix.cuh"
#include "kernels/common/mma_tf32.cuh"
#include "kernels/common/tf32_split.cuh"

namespace prime::kernels::detail {

namespace {

constexpr int kTile = 64;   // output rows and columns per block
constexpr int kSlab = 32;   // depth per shared-memory stage
constexpr int kThreads = 128;
constexpr int kAlongDepthLd = kSlab + 4;  // a [64][32] stage whose rows run along the depth
constexpr int kAlongTileLd = kTile + 8;   // a [32][64] stage whose rows run along m or n
constexpr int kStage = kTile * kAlongDepthLd;  // = kSlab * kAlongTileLd floats
static_assert(kTile * kAlongDepthLd == kSlab * kAlongTileLd, "both orientations fill one stage");

// A batch of one to three dims (kMaxGemmBatchDims), right-aligned: entry e is (e0, e1, e2) with e2 the
// fastest, and a tensor's entry starts at e0 stride[0] + e1 stride[1] + e2 stride[2] (a missing dim:
// stride 0, size 1).
struct BatchStrides {
  long long stride[3];
};
struct BatchIndex {
  long long e0;
  int e1, e2;
  __device__ __forceinline__ long long offset(const BatchStrides& s) const {
    return e0 * s.stride[0] + e1 * s.stride[1] + e2 * s.stride[2];
  }
};

struct Operand {
  const void* data;      // float, or bf16 bits (uint16_t)
  BatchStrides batch;    // in elements
  long long ld;          // in elements: the stride of the dimension that is not contiguous
};

struct Term {
  Operand a, b;
  const float* column_scale;  // [batch...][n], or null
  BatchStrides scale_batch;
  const float* row_scale;     // [batch...][m], or null
  BatchStrides row_scale_batch;
  const void* dot_with;       // float, or bf16 (dot_with_bf16): out's shape, or null
  BatchStrides dot_with_batch;
  long long dot_with_ld;
  float* dots;                // [batch...][ceil(n / 64)][m] (with dot_with)
  BatchStrides dots_batch;
  long long dots_tile_stride;
  bool dot_with_bf16;
  // The epilogue's operands staged in shared memory (kernel instances for sums only): dot_with bf16 with its rows and
  // batch on 16 bytes; the row scale's batch and base on 16 bytes.
  bool dot_with_staged, row_scale_staged;
  int k;
  float alpha;
};

struct Params {
  Term terms[kMaxGemmTerms];
  int num_terms;
  int second_group;  // the first term of the second pair of orientations (num_terms: one pair)
  void* out;  // float, or bf16 (out_bf16)
  BatchStrides out_batch;
  long long out_ld;
  int batch1, batch2;  // the sizes of the batch's two fastest dims
  bool out_bf16;
  int m, n;
  float beta;
};

// One stage of an operand of element type T (float or bf16 bits): rows [row0, row0 + kRows) of a
// matrix whose rows are contiguous (row stride ld), columns [col0, col0 + kWidth); zeros past (rows,
// cols), which are multiples of a 16-byte vector's elements.
template <int kRows, int kWidth, int kLd, typename T>
__device__ __forceinline__ void load_stage(T* stage, const T* base, long long ld, int row0, int col0, int rows,
                                           int cols) {
  constexpr int kPerVector = 16 / sizeof(T), kVectors = kWidth / kPerVector;
  for (int i = threadIdx.x; i < kRows * kVectors; i += kThreads) {
    const int r = i / kVectors, c = (i % kVectors) * kPerVector;
    const bool valid = row0 + r < rows && col0 + c < cols;
    const T* src = valid ? base + (row0 + r) * ld + col0 + c : base;
    cp_async16_or_zero(stage + r * kLd + c, src, valid);
  }
}

// One operand's stage: its tile rows (m of A, n of B) [tile0, tile0 + 64) by the depth
// [k0, k0 + kDepth). kAlongDepth: the operand's rows in memory run along the depth (A row-major, B
// stored as B^T row-major), staged [64][32 + 4] fp32 ([64][kDepth + 8] bf16); else [kDepth][64 + 8].
// kBits16: the operand is bf16 in memory and in the stage (bf16 products only). kDepth: 32, or 64 where
// both operands are bf16 (a [64][64 + 8] bf16 stage fills the bytes of a [64][32 + 4] fp32 one: half the
// slabs, twice the bytes in flight per copy; the fragment reads meet no bank twice at either depth).
template <bool kAlongDepth, bool kBits16 = false, int kDepth = kSlab>
struct Stage {
  using T = std::conditional_t<kBits16, uint16_t, float>;
  static_assert(kDepth == kSlab || (kBits16 && kDepth == 2 * kSlab), "64-deep stages hold bf16 operands");
  static constexpr int kDepthLd = kBits16 ? kDepth + 8 : kAlongDepthLd, kTileLd = kAlongTileLd;
  static_assert(kTile * kDepthLd * sizeof(T) <= kStage * sizeof(float) &&
                    kDepth * kTileLd * sizeof(T) <= kStage * sizeof(float),
                "a bf16 stage fits an fp32 one");
  static __device__ __forceinline__ void load(float* stage, const Operand& x, int tile0, int k0, int extent, int k) {
    T* to = reinterpret_cast<T*>(stage);
    const T* from = static_cast<const T*>(x.data);
    if constexpr (kAlongDepth)
      load_stage<kTile, kDepth, kDepthLd>(to, from, x.ld, tile0, k0, extent, k);
    else
      load_stage<kDepth, kTile, kTileLd>(to, from, x.ld, k0, tile0, k, extent);
  }
  // Tile row i at depth kk.
  static __device__ __forceinline__ T element(const float* stage, int i, int kk) {
    const T* x = reinterpret_cast<const T*>(stage);
    return kAlongDepth ? x[i * kDepthLd + kk] : x[kk * kTileLd + i];
  }
  static __device__ __forceinline__ float at(const float* stage, int i, int kk) {
    static_assert(!kBits16, "an fp32 operand's element");
    return element(stage, i, kk);
  }
  // With bf16 operands on both sides: the four 8 x 8 matrices of a fragment by one ldmatrix, lanes 8j..8j+7
  // giving matrix j's rows; this lane's row is tile rows [i0, i0 + 8) by depths [k0, k0 + 8), row `row` of
  // the stage's layout (a tile row where the rows run along the depth, else a depth, read transposed).
  // Each lane then holds tile row i0 + lane / 4 at depths k0 + 2 (lane % 4), + 1.
  static __device__ __forceinline__ void matrices(uint32_t (&r)[4], const float* stage, int i0, int k0, int row) {
    static_assert(kBits16, "ldmatrix reads bf16 stages");
    const T* x = reinterpret_cast<const T*>(stage);
    if constexpr (kAlongDepth)
      ldmatrix_x4(r, shared_address(x + (i0 + row) * kDepthLd + k0));
    else
      ldmatrix_x4_transposed(r, shared_address(x + (k0 + row) * kTileLd + i0));
  }
  // The bf16 pair (tile row i at depths k_low, k_high) as an MMA register, k_low in the low half: an fp32
  // operand's values rounded to bf16, a bf16 operand's bits as they are.
  static __device__ __forceinline__ uint32_t pair(const float* stage, int i, int k_low, int k_high) {
    if constexpr (kBits16)
      return static_cast<uint32_t>(element(stage, i, k_low)) | (static_cast<uint32_t>(element(stage, i, k_high)) << 16);
    else
      return bf16_tiles::bf16_pair(element(stage, i, k_low), element(stage, i, k_high));
  }
};

// One 16-deep step of a warp's 32 x 32 block on the bf16 tensor cores (m16n8k16's fragments), each
// element rounded to bf16. The fragments' depth slots 2t, 2t + 1, 2t + 8, 2t + 9 hold depths kk + t,
// + t + 4, + t + 8, + t + 12 in both operands (a permutation of the step's depth, the same for A and B,
// so the same product): the 3xTF32 steps' access pattern, free of bank conflicts with these paddings,
// where depths kk + 2t.. would meet two lanes in a bank.
template <typename A, typename B>
__device__ __forceinline__ void bf16_step(float (&acc)[2][4][4], const float* as, const float* bs, int wm, int wn,
                                          int kk, int g, int t) {
  const int k0 = kk + t;
  uint32_t a[2][4], b[4][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = wm + 16 * i + g;
    a[i][0] = A::pair(as, r, k0, k0 + 4);
    a[i][1] = A::pair(as, r + 8, k0, k0 + 4);
    a[i][2] = A::pair(as, r, k0 + 8, k0 + 12);
    a[i][3] = A::pair(as, r + 8, k0 + 8, k0 + 12);
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int c = wn + 8 * j + g;
    b[j][0] = B::pair(bs, c, k0, k0 + 4);
    b[j][1] = B::pair(bs, c, k0 + 8, k0 + 12);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) bf16_tiles::mma_m16n8k16(acc[i][j], a[i], b[j][0], b[j][1]);
}

// The same step where both operands are bf16 stages: each operand's fragments by ldmatrix (two x4 loads for
// A's 32 x 16 and two for B's 16 x 32, against 32 16-bit loads), the fragments' depth slots in the natural
// order (slots 2t, 2t + 1 hold depths kk + 2t, + 1). In both stage layouts a matrix's eight 16-byte rows
// start 72 or 40 bf16 apart (144 or 80 bytes: 4-word or 20-word bank steps), which meet no bank twice.
template <typename A, typename B>
__device__ __forceinline__ void bf16_step_ldmatrix(float (&acc)[2][4][4], const float* as, const float* bs, int wm,
                                                   int wn, int kk, int lane) {
  const int matrix = lane / 8, row = lane % 8;
  uint32_t a[2][4], b[4][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)  // matrices: rows +0 and +8 at depths +0, then rows +0 and +8 at depths +8
    A::matrices(a[i], as, wm + 16 * i + 8 * (matrix & 1), kk + 8 * (matrix >> 1), row);
#pragma unroll
  for (int j = 0; j < 4; j += 2) {  // matrices: columns +0 at depths +0 and +8, then columns +8 the same
    uint32_t r[4];
    B::matrices(r, bs, wn + 8 * j + 8 * (matrix >> 1), kk + 8 * (matrix & 1), row);
    b[j][0] = r[0], b[j][1] = r[1], b[j + 1][0] = r[2], b[j + 1][1] = r[3];
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) bf16_tiles::mma_m16n8k16(acc[i][j], a[i], b[j][0], b[j][1]);
}

// One term's depth, slab by slab, into acc: the double-buffered stages run on across terms (the next term's
// first slab is copied while this term's last one is multiplied). `slab` counts every term's slabs so far.
// kA16, kB16: that operand bf16 in memory (with kBf16 only). kSum: more than one term, or terms with row scales
// or dots (bf16 products only; the running sum's registers and the staged epilogue are the single product's
// cost otherwise).
// kA2RowMajor, kB2RowMajor: the orientations of terms [p.second_group, num_terms) (bf16 operands only; the
// same as the first pair: one group).
template <bool kARowMajor, bool kBRowMajor, bool kBf16, bool kA16 = false, bool kB16 = false, bool kSum = false,
          bool kA2RowMajor = kARowMajor, bool kB2RowMajor = kBRowMajor>
__global__ void __launch_bounds__(kThreads) chunk_gemm_kernel(Params p) {
  static_assert(kBf16 || (!kA16 && !kB16), "bf16 operands take bf16 products");
  static_assert(kBf16 || !kSum, "sums of products take bf16 products");
  constexpr bool kTwoGroups = kA2RowMajor != kARowMajor || kB2RowMajor != kBRowMajor;
  static_assert(!kTwoGroups || (kSum && kA16 && kB16), "two groups of orientations take bf16 operands");
  const int num_terms = kSum ? p.num_terms : 1;
  constexpr int kDepth = kA16 && kB16 ? 2 * kSlab : kSlab;  // each stage's depth
  using A = Stage<kARowMajor, kA16, kDepth>;    // A [m][k] row-major: its rows run along the depth
  using B = Stage<!kBRowMajor, kB16, kDepth>;   // B [k][n] row-major: its rows run along n
  using A2 = Stage<kA2RowMajor, kA16, kDepth>;
  using B2 = Stage<!kB2RowMajor, kB16, kDepth>;
  __shared__ __align__(16) float a_stage[2][kStage];
  __shared__ __align__(16) float b_stage[2][kStage];
  __shared__ float row_dots[kMaxGemmTerms][2][kTile];  // each term's row dots, per half of the tile's columns
  // Each warp's staged epilogue operands (sums): its 32 x 32 block of dot_with as bf16 rows of four
  // 16-byte chunks, chunk j of row r at j ^ (r / 2 % 4) (the epilogue's word reads, rows g and columns 2 t,
  // meet no bank twice), and its 32 row scales.
  constexpr int kStagedWarps = kSum ? 4 : 1, kStagedRows = kSum ? 32 : 1;  // none for single products
  __shared__ __align__(16) uint16_t dot_stage[kStagedWarps][kStagedRows * 32];
  __shared__ __align__(16) float row_scale_stage[kStagedWarps][kStagedRows];
  const long long entry = blockIdx.x;
  const BatchIndex at_entry{entry / (static_cast<long long>(p.batch1) * p.batch2),
                            static_cast<int>((entry / p.batch2) % p.batch1), static_cast<int>(entry % p.batch2)};
  const int n0 = blockIdx.y * kTile, m0 = blockIdx.z * kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;  // the warp's block within the tile
  // Term `term`'s operands at this batch entry; its slab `s` into stage buffer `buffer`.
  const auto load = [&](int buffer, int term, int s) {
    Operand a = p.terms[term].a, b = p.terms[term].b;
    a.data = static_cast<const typename A::T*>(a.data) + at_entry.offset(a.batch);
    b.data = static_cast<const typename B::T*>(b.data) + at_entry.offset(b.batch);
    if (kTwoGroups && term >= p.second_group) {
      A2::load(a_stage[buffer], a, m0, s * kDepth, p.m, p.terms[term].k);
      B2::load(b_stage[buffer], b, n0, s * kDepth, p.n, p.terms[term].k);
    } else {
      A::load(a_stage[buffer], a, m0, s * kDepth, p.m, p.terms[term].k);
      B::load(b_stage[buffer], b, n0, s * kDepth, p.n, p.terms[term].k);
    }
    cp_async_commit();
  };

  // Term `term`'s staged epilogue operands for this warp, one commit group (empty where none is staged).
  const auto stage_epilogue = [&](int term) {
    const Term& now = p.terms[term];
    __syncwarp();  // every lane is past the previous term's epilogue, which read these buffers
    if (now.dot_with_staged) {
      const uint16_t* with = static_cast<const uint16_t*>(now.dot_with) + at_entry.offset(now.dot_with_batch);
#pragma unroll
      for (int v = lane; v < 32 * 4; v += 32) {
        const int row = v / 4, chunk = v % 4, r = m0 + wm + row, c = n0 + wn + 8 * chunk;
        const bool valid = r < p.m && c < p.n;
        cp_async16_or_zero(dot_stage[warp] + row * 32 + 8 * (chunk ^ ((row >> 1) & 3)),
                           valid ? with + r * now.dot_with_ld + c : with, valid);
      }
    }
    if (now.row_scale_staged && lane < 8) {
      const float* scale = now.row_scale + at_entry.offset(now.row_scale_batch);
      const int r = m0 + wm + 4 * lane;
      cp_async16_or_zero(row_scale_stage[warp] + 4 * lane, r < p.m ? scale + r : scale, r < p.m);
    }
    cp_async_commit();
  };

  float acc[2][4][4];
  float sum[2][4][4] = {};  // the terms so far: alpha acc diag(scale) added in turn, as chunk_gemm's calls add them
  int slab = 0;
  load(0, 0, 0);
  for (int term = 0; term < num_terms; ++term) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    const int k = p.terms[term].k, slabs = (k + kDepth - 1) / kDepth;
    for (int s = 0; s < slabs; ++s, ++slab) {
      const bool last_of_term = s + 1 == slabs;
      // In a sum the term's first slab commits the epilogue's group before the next stage's, so this slab's
      // stage is one group further back.
      if constexpr (kSum)
        if (s == 0) stage_epilogue(term);
      if (!last_of_term || term + 1 < num_terms) {
        load((slab + 1) & 1, last_of_term ? term + 1 : term, last_of_term ? 0 : s + 1);
        if (kSum && s == 0)
          cp_async_wait<2>();
        else
          cp_async_wait<1>();
      } else {
        if (kSum && s == 0)
          cp_async_wait<1>();
        else
          cp_async_wait<0>();
      }
      __syncthreads();
      const float* as = a_stage[slab & 1];
      const float* bs = b_stage[slab & 1];
      const int depth = min(kDepth, k - s * kDepth);  // a multiple of 8
      if constexpr (kBf16) {  // 16-deep steps: past the depth the stage holds zeros
        if constexpr (kA16 && kB16) {
          if (kTwoGroups && term >= p.second_group) {
            for (int kk = 0; kk < depth; kk += 16) bf16_step_ldmatrix<A2, B2>(acc, as, bs, wm, wn, kk, lane);
          } else {
            for (int kk = 0; kk < depth; kk += 16) bf16_step_ldmatrix<A, B>(acc, as, bs, wm, wn, kk, lane);
          }
        } else {
          for (int kk = 0; kk < depth; kk += 16) bf16_step<A, B>(acc, as, bs, wm, wn, kk, g, t);
        }
      } else {
        for (int kk = 0; kk < depth; kk += 8) {
          uint32_t a_hi[2][4], a_lo[2][4], b_hi[4][2], b_lo[4][2];
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int r = wm + 16 * i + g;
            const float v[4] = {A::at(as, r, kk + t), A::at(as, r + 8, kk + t), A::at(as, r, kk + t + 4),
                                A::at(as, r + 8, kk + t + 4)};
#pragma unroll
            for (int e = 0; e < 4; ++e) split_tf32_bits(__float_as_uint(v[e]), a_hi[i][e], a_lo[i][e]);
          }
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int c = wn + 8 * j + g;
            split_tf32_bits(__float_as_uint(B::at(bs, c, kk + t)), b_hi[j][0], b_lo[j][0]);
            split_tf32_bits(__float_as_uint(B::at(bs, c, kk + t + 4)), b_hi[j][1], b_lo[j][1]);
          }
#pragma unroll
          for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              float step[4] = {0.0f, 0.0f, 0.0f, 0.0f};
              mma_tf32x3(step, a_hi[i], a_lo[i], b_hi[j], b_lo[j]);
#pragma unroll
              for (int e = 0; e < 4; ++e) acc[i][j][e] += step[e];
            }
        }
      }
      __syncthreads();  // the next copies overwrite the stage read here
    }
    // This term into the sum: alpha acc (times its column's scale; its row dot with dot_with taken there), times
    // its row's scale, plus beta out (the first term) or the sum so far, in chunk_gemm's order of operations. The
    // scales and the sum's add are rounded each on its own (no multiply fused into the add), so a kernel that forms
    // the same sum (gdn_chunk's backward sums, gdn_backward_sums.cuh) can give its bits.
    const Term& now = p.terms[term];
    const float alpha = now.alpha;
    const float* scale = now.column_scale != nullptr ? now.column_scale + at_entry.offset(now.scale_batch) : nullptr;
    const float* row_scale =
        now.row_scale != nullptr ? now.row_scale + at_entry.offset(now.row_scale_batch) : nullptr;
    const bool dotted = now.dot_with != nullptr;  // the same in every thread: the shuffles below are whole-warp
    const long long dot_at = at_entry.offset(now.dot_with_batch);
    const float* out = static_cast<const float*>(p.out) + at_entry.offset(p.out_batch);
    const bool dot_staged = kSum && now.dot_with_staged, row_scale_staged = kSum && now.row_scale_staged;
    if (dot_staged || row_scale_staged) {  // this warp's copies of them have landed (only the next stage's may not)
      if (term + 1 < num_terms)
        cp_async_wait<1>();
      else
        cp_async_wait<0>();
      __syncwarp();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = m0 + wm + 16 * i + g + 8 * half;
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int c = n0 + wn + 8 * j + 2 * t;
          if (r >= p.m || c >= p.n) continue;
          float2 value = make_float2(alpha * acc[i][j][2 * half], alpha * acc[i][j][2 * half + 1]);
          if (scale != nullptr) {
            value.x = __fmul_rn(value.x, scale[c]);
            value.y = __fmul_rn(value.y, scale[c + 1]);
          }
          const int warp_row = 16 * i + g + 8 * half;  // within the warp's block
          if (dotted) {
            float2 x;
            if (dot_staged) {
              x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(
                  dot_stage[warp] + warp_row * 32 + 8 * (j ^ ((warp_row >> 1) & 3)) + 2 * t));
            } else {
              const long long at = dot_at + r * now.dot_with_ld + c;
              x = now.dot_with_bf16
                      ? __bfloat1622float2(*(static_cast<const __nv_bfloat162*>(now.dot_with) + at / 2))
                      : *reinterpret_cast<const float2*>(static_cast<const float*>(now.dot_with) + at);
            }
            dot = fmaf(value.x, x.x, dot);
            dot = fmaf(value.y, x.y, dot);
          }
          if (row_scale != nullptr) {
            const float factor = row_scale_staged ? row_scale_stage[warp][warp_row] : row_scale[r];
            value.x = __fmul_rn(value.x, factor);
            value.y = __fmul_rn(value.y, factor);
          }
          if (term > 0) {
            value.x = __fadd_rn(value.x, sum[i][j][2 * half]);
            value.y = __fadd_rn(value.y, sum[i][j][2 * half + 1]);
          } else if (p.beta != 0.0f) {  // out fp32 (a bf16 out takes beta 0)
            const float2 old = *reinterpret_cast<const float2*>(out + r * p.out_ld + c);
            value.x += p.beta * old.x;
            value.y += p.beta * old.y;
          }
          sum[i][j][2 * half] = value.x;
          sum[i][j][2 * half + 1] = value.y;
        }
        if (dotted) {  // the row's dot over the warp's 32 columns: its four lanes' parts
          dot += __shfl_xor_sync(0xffffffffu, dot, 1);
          dot += __shfl_xor_sync(0xffffffffu, dot, 2);
          if (t == 0) row_dots[term][warp & 1][wm + 16 * i + g + 8 * half] = dot;
        }
      }
  }
  // The dotted terms' rows over the tile's 64 columns (the two warps' halves, in order) to dots[..., tile, m].
  bool any_dots = false;
  for (int term = 0; term < num_terms; ++term) any_dots = any_dots || p.terms[term].dots != nullptr;
  if (any_dots) {
    __syncthreads();
    for (int index = threadIdx.x; index < num_terms * kTile; index += kThreads) {
      const Term& term = p.terms[index / kTile];
      const int row = index % kTile;
      if (term.dots == nullptr || m0 + row >= p.m) continue;
      term.dots[at_entry.offset(term.dots_batch) + blockIdx.y * term.dots_tile_stride + m0 + row] =
          row_dots[index / kTile][0][row] + row_dots[index / kTile][1][row];
    }
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = m0 + wm + 16 * i + g + 8 * half;
      if (r >= p.m) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = n0 + wn + 8 * j + 2 * t;
        if (c >= p.n) continue;
        const long long at = at_entry.offset(p.out_batch) + r * p.out_ld + c;
        if (p.out_bf16)
          *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p.out) + at) =
              __floats2bfloat162_rn(sum[i][j][2 * half], sum[i][j][2 * half + 1]);
        else
          *reinterpret_cast<float2*>(static_cast<float*>(p.out) + at) =
              make_float2(sum[i][j][2 * half], sum[i][j][2 * half + 1]);
      }
    }
}

// The strides of x's first `dims` dims (its batch), right-aligned.
BatchStrides batch_strides(const at::Tensor& x, int64_t dims) {
  BatchStrides s{{0, 0, 0}};
  for (int64_t i = 0; i < dims; ++i) s.stride[3 - dims + i] = x.stride(i);
  return s;
}

// The operand's description; row_major = its last dimension is the contiguous one.
Operand describe(const at::Tensor& x, bool& row_major) {
  row_major = x.stride(-1) == 1;
  return Operand{x.data_ptr(), batch_strides(x, x.dim() - 2), row_major ? x.stride(-2) : x.stride(-1)};
}

// A term's row scale and row dots (checked here: chunk_gemm_sum serves them only as these checks want).
void describe_row_terms(const GemmTerm& term, const at::Tensor& out, int64_t batch_dims, Term& to) {
  const at::IntArrayRef batch_sizes = out.sizes().slice(0, batch_dims);
  const int64_t m = out.size(-2), n = out.size(-1);
  to.row_scale = nullptr, to.dot_with = nullptr, to.dots = nullptr;
  to.dot_with_staged = false, to.row_scale_staged = false;
  // Whether x's batch strides (elements of `size` bytes) and base are on 16 bytes.
  const auto batch_on_16_bytes = [&](const at::Tensor& x, int64_t size) {
    bool on = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
    for (int64_t dim = 0; dim < batch_dims; ++dim) on = on && x.stride(dim) * size % 16 == 0;
    return on;
  };
  if (term.row_scale.defined()) {
    const at::Tensor& scale = term.row_scale;
    PRIME_CHECK(scale.is_cuda() && scale.scalar_type() == at::kFloat && scale.dim() == batch_dims + 1 &&
                    scale.sizes().slice(0, batch_dims) == batch_sizes && scale.size(-1) == m && scale.stride(-1) == 1,
                "chunk_gemm: row scale ", scale.sizes(), " must be fp32 [batch..., m] with its last stride 1");
    to.row_scale = scale.data_ptr<float>();
    to.row_scale_batch = batch_strides(scale, batch_dims);
    to.row_scale_staged = batch_on_16_bytes(scale, 4);
  }
  PRIME_CHECK(term.dot_with.defined() == term.dots.defined(), "chunk_gemm: a term's dot_with and dots come together");
  if (!term.dot_with.defined()) return;
  const at::Tensor &with = term.dot_with, &dots = term.dots;
  const bool bf16 = with.scalar_type() == at::kBFloat16;
  bool even = with.stride(-2) % 2 == 0;
  for (int64_t dim = 0; dim < batch_dims; ++dim) even = even && with.stride(dim) % 2 == 0;
  PRIME_CHECK(with.is_cuda() && (bf16 || with.scalar_type() == at::kFloat) && with.sizes() == out.sizes() &&
                  with.stride(-1) == 1 && even && reinterpret_cast<uintptr_t>(with.data_ptr()) % (bf16 ? 4 : 8) == 0,
              "chunk_gemm: dot_with ", with.sizes(), " must be fp32 or bf16 of out's shape with its last stride 1, ",
              "its others even");
  const int64_t tiles = (n + kTile - 1) / kTile;
  PRIME_CHECK(dots.is_cuda() && dots.scalar_type() == at::kFloat && dots.dim() == batch_dims + 2 &&
                  dots.sizes().slice(0, batch_dims) == batch_sizes && dots.size(-2) == tiles && dots.size(-1) == m &&
                  dots.stride(-1) == 1,
              "chunk_gemm: dots ", dots.sizes(), " must be fp32 [batch..., ", tiles, ", ", m, "] with its last stride 1");
  to.dot_with = with.data_ptr();
  to.dot_with_bf16 = bf16;
  to.dot_with_staged = bf16 && with.stride(-2) % 8 == 0 && batch_on_16_bytes(with, 2);
  to.dot_with_batch = batch_strides(with, batch_dims);
  to.dot_with_ld = with.stride(-2);
  to.dots = dots.data_ptr<float>();
  to.dots_batch = batch_strides(dots, batch_dims);
  to.dots_tile_stride = dots.stride(-2);
}

template <bool kARowMajor, bool kBRowMajor, bool kSum>
void launch_bf16(const Params& p, dim3 grid, cudaStream_t stream, bool a16, bool b16) {
  if (a16 && b16)
    chunk_gemm_kernel<kARowMajor, kBRowMajor, true, true, true, kSum><<<grid, kThreads, 0, stream>>>(p);
  else if (a16)
    chunk_gemm_kernel<kARowMajor, kBRowMajor, true, true, false, kSum><<<grid, kThreads, 0, stream>>>(p);
  else if (b16)
    chunk_gemm_kernel<kARowMajor, kBRowMajor, true, false, true, kSum><<<grid, kThreads, 0, stream>>>(p);
  else
    chunk_gemm_kernel<kARowMajor, kBRowMajor, true, false, false, kSum><<<grid, kThreads, 0, stream>>>(p);
}

// A sum of bf16 operands whose second group of terms takes orientations (kA2RowMajor, kB2RowMajor), which
// differ from the first group's (launch_chunk_gemm starts a second group only there: no kernel instance for
// the same pair twice).
template <bool kARowMajor, bool kBRowMajor, bool kA2RowMajor, bool kB2RowMajor>
void launch_second_group(const Params& p, dim3 grid, cudaStream_t stream) {
  if constexpr (kARowMajor == kA2RowMajor && kBRowMajor == kB2RowMajor)
    PRIME_CHECK(false, "chunk_gemm: a second group of terms in the first group's orientations");
  else
    chunk_gemm_kernel<kARowMajor, kBRowMajor, true, true, true, true, kA2RowMajor, kB2RowMajor>
        <<<grid, kThreads, 0, stream>>>(p);
}
template <bool kARowMajor, bool kBRowMajor>
void launch_two_groups(const Params& p, dim3 grid, cudaStream_t stream, bool a2_rows, bool b2_rows) {
  if (a2_rows && b2_rows)
    launch_second_group<kARowMajor, kBRowMajor, true, true>(p, grid, stream);
  else if (a2_rows)
    launch_second_group<kARowMajor, kBRowMajor, true, false>(p, grid, stream);
  else if (b2_rows)
    launch_second_group<kARowMajor, kBRowMajor, false, true>(p, grid, stream);
  else
    launch_second_group<kARowMajor, kBRowMajor, false, false>(p, grid, stream);
}

template <bool kARowMajor, bool kBRowMajor>
void launch(const Params& p, dim3 grid, cudaStream_t stream, bool bf16, bool a16, bool b16, bool a2_rows,
            bool b2_rows) {
  bool row_terms = false;  // a term with a row scale or dots: the sums' instance, which stages them
  for (int term = 0; term < p.num_terms; ++term)
    row_terms = row_terms || p.terms[term].row_scale != nullptr || p.terms[term].dot_with != nullptr;
  if (!bf16)
    chunk_gemm_kernel<kARowMajor, kBRowMajor, false><<<grid, kThreads, 0, stream>>>(p);
  else if (p.second_group < p.num_terms)
    launch_two_groups<kARowMajor, kBRowMajor>(p, grid, stream, a2_rows, b2_rows);
  else if (p.num_terms > 1 || row_terms)
    launch_bf16<kARowMajor, kBRowMajor, true>(p, grid, stream, a16, b16);
  else
    launch_bf16<kARowMajor, kBRowMajor, false>(p, grid, stream, a16, b16);
  PRIME_CUDA_CHECK_LAUNCH("chunk_gemm_kernel");
}

}  // namespace

void launch_chunk_gemm(const at::Tensor& out, const std::vector<GemmTerm>& terms, float beta, bool bf16_products) {
  PRIME_CHECK(!terms.empty() && terms.size() <= static_cast<size_t>(kMaxGemmTerms) &&
                  (terms.size() == 1 || bf16_products),
              "chunk_gemm: ", terms.size(), " terms, want 1 to ", kMaxGemmTerms, " (more than one with bf16 products)");
  const at::Tensor &a0 = terms.front().a, &b0 = terms.front().b;
  const int64_t dims = out.dim(), batch_dims = dims - 2;
  PRIME_CHECK(batch_dims >= 1 && batch_dims <= kMaxGemmBatchDims, "chunk_gemm: out ", out.sizes(), " has ",
              batch_dims, " batch dims, want 1 to ", kMaxGemmBatchDims);
  const at::IntArrayRef batch_sizes = out.sizes().slice(0, batch_dims);
  const int64_t batch = c10::multiply_integers(batch_sizes);
  const bool a16 = a0.scalar_type() == at::kBFloat16, b16 = b0.scalar_type() == at::kBFloat16;
  const bool out16 = out.scalar_type() == at::kBFloat16;
  PRIME_CHECK(out.is_cuda() && (out.scalar_type() == at::kFloat || (out16 && bf16_products && beta == 0.0f)) &&
                  out.stride(-1) == 1,
              "chunk_gemm: out ", out.sizes(), " ", out.scalar_type(),
              " is not an fp32 CUDA tensor (or bf16 for bf16 products and beta 0) with its rows contiguous");
  const c10::cuda::CUDAGuard guard(a0.device());
  Params p{};
  p.num_terms = static_cast<int>(terms.size());
  p.second_group = p.num_terms;
  bool a_rows = false, b_rows = false, a2_rows = false, b2_rows = false;
  for (size_t i = 0; i < terms.size(); ++i) {
    const GemmTerm& term = terms[i];
    const at::Tensor &a = term.a, &b = term.b;
    PRIME_CHECK(a.is_cuda() && b.is_cuda() && a.scalar_type() == a0.scalar_type() &&
                    b.scalar_type() == b0.scalar_type() && (a.scalar_type() == at::kFloat || a16) &&
                    (b.scalar_type() == at::kFloat || b16) && (bf16_products || (!a16 && !b16)) &&
                    a.dim() == dims && b.dim() == dims && a.sizes().slice(0, batch_dims) == batch_sizes &&
                    b.sizes().slice(0, batch_dims) == batch_sizes && a.size(-2) == out.size(-2) &&
                    b.size(-1) == out.size(-1) && a.size(-1) == b.size(-2),
                "chunk_gemm: operands ", a.sizes(), " ", b.sizes(), " into ", out.sizes(),
                " are not fp32 (or, for bf16 products, bf16) CUDA tensors of the first term's dtypes and out's batch");
    bool term_a_rows = false, term_b_rows = false;
    p.terms[i].a = describe(a, term_a_rows);
    p.terms[i].b = describe(b, term_b_rows);
    if (i == 0) a_rows = term_a_rows, b_rows = term_b_rows;
    const bool first_pair = term_a_rows == a_rows && term_b_rows == b_rows;
    if (!first_pair && p.second_group == p.num_terms) {
      p.second_group = static_cast<int>(i), a2_rows = term_a_rows, b2_rows = term_b_rows;
      PRIME_CHECK(bf16_products && a16 && b16, "chunk_gemm: term ", i, "'s operands are not in the first term's ",
                  "orientations (two groups of orientations take bf16 operands)");
    }
    PRIME_CHECK(p.second_group == p.num_terms || static_cast<int>(i) < p.second_group ||
                    (term_a_rows == a2_rows && term_b_rows == b2_rows),
                "chunk_gemm: term ", i, "'s orientations start a third group (at most two, each one run of terms)");
    p.terms[i].k = static_cast<int>(a.size(-1));
    p.terms[i].alpha = static_cast<float>(term.alpha);
    p.terms[i].column_scale = nullptr;
    p.terms[i].scale_batch = BatchStrides{{0, 0, 0}};
    const at::Tensor& column_scale = term.column_scale;
    if (column_scale.defined()) {
      PRIME_CHECK(column_scale.is_cuda() && column_scale.scalar_type() == at::kFloat &&
                      column_scale.dim() == dims - 1 && column_scale.sizes().slice(0, batch_dims) == batch_sizes &&
                      column_scale.size(-1) == b.size(-1) && column_scale.stride(-1) == 1,
                  "chunk_gemm: column scale ", column_scale.sizes(),
                  " must be fp32 [batch..., n] with its last stride 1");
      p.terms[i].column_scale = column_scale.data_ptr<float>();
      p.terms[i].scale_batch = batch_strides(column_scale, batch_dims);
    }
    describe_row_terms(term, out, batch_dims, p.terms[i]);
  }
  p.out = out.data_ptr();
  p.out_bf16 = out16;
  p.out_batch = batch_strides(out, batch_dims);
  p.out_ld = out.stride(-2);
  p.batch1 = static_cast<int>(batch_dims >= 2 ? batch_sizes[batch_dims - 2] : 1);
  p.batch2 = static_cast<int>(batch_sizes[batch_dims - 1]);
  p.m = static_cast<int>(out.size(-2));
  p.n = static_cast<int>(out.size(-1));
  p.beta = beta;
  if (batch == 0) return;
  const dim3 grid(static_cast<unsigned>(batch), (p.n + kTile - 1) / kTile, (p.m + kTile - 1) / kTile);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (a_rows && b_rows)
    launch<true, true>(p, grid, stream, bf16_products, a16, b16, a2_rows, b2_rows);
  else if (a_rows)
    launch<true, false>(p, grid, stream, bf16_products, a16, b16, a2_rows, b2_rows);
  else if (b_rows)
    launch<false, true>(p, grid, stream, bf16_products, a16, b16, a2_rows, b2_rows);
  else
    launch<false, false>(p, grid, stream, bf16_products, a16, b16, a2_rows, b2_rows);
}

}  // namespace prime::kernels::detail
