// CUDA kernels of GDN's written-out chunked backward (gdn_chunk_backward.cpp): the elementwise
// work and row sums around its batched products, one block per 64-step chunk, each reading its
// operands once. Gamma is formed per chunk in float64 as in the forward, so no [64][64] decay
// matrix goes through memory.
//  - scores: scores = (Q K^T) * D, D_ij = e^{Gamma_i - Gamma_j} for j <= i, else 0.
//  - gates: from d_scores = dO U^T, Q K^T, P = T^T dT T^T and K K^T: d(QK^T) = d_scores * D (over
//    d_scores), dA * D = -P * D below the diagonal, d(KK^T) = beta_i dA_ij D_ij (over P, mirrored above
//    the diagonal: d(KK^T) + d(KK^T)^T, K's two terms of dK in one product), beta's
//    part sum_j dA_ij D_ij (k_i . k_j), and the decays' part of dg: sum_{j < t <= i} E_ij with
//    E = dD * D. With bf16 products its [64][64] operands Q K^T, K K^T and P are formed in the kernel
//    on the tensor cores from q's and k's bf16 rows, T and dT (gates_rows) instead of read in fp32, and
//    d_scores too where it is given dO's and U's bf16 rows.
//  - rows: the chain rule's per-row products (dq += e^Gamma d(e^Gamma Q), dk += beta e^Gamma dK_in
//    + e^{Gamma_C - Gamma} dK_d, dv = beta dV_in; a warp per row, each lane D / 32 consecutive elements
//    as one vector), their row sums, and dg and dbeta in full,
//    written straight into the inputs' [B,T,H,...] layout; q, k and v read in fp32 or as the bf16
//    forward's bf16 (their exact values: the same sums either way).
//  - state_dot: the chunk decays' gradient, sum of S_n * G_n over each chunk's state.
//  - inverse: T = (I + A)^-1 again for a forward that did not keep it, A formed in place from
//    K K^T (read, or formed from k's bf16 rows), the gates and beta (the fp32 fused forward's blockwise
//    inverse).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernels/common/bf16_split_tiles.cuh"
#include "kernels/common/bf16_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/gdn_chunk/gdn_chunk_launch.h"
#include "kernels/gdn_chunk/gdn_chunk_rows.cuh"
#include "kernels/gdn_chunk/gdn_forward_common.cuh"

namespace prime::kernels::detail {

namespace {

constexpr int kChunk = 64;
constexpr int kThreads = 256;
constexpr int kLd = kChunk + 1;  // [64][65]: a column walk touches 64 banks

// gamma[t] = sum_{s <= t} g[s] in float64 for the block's chunk (g: its 64 gates). Synchronises.
__device__ __forceinline__ void chunk_gamma(const float* g, double* gamma) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    double low = g[lane], high = g[32 + lane];
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const double a = __shfl_up_sync(0xffffffffu, low, offset), b = __shfl_up_sync(0xffffffffu, high, offset);
      if (lane >= offset) low += a, high += b;
    }
    const double total_low = __shfl_sync(0xffffffffu, low, 31);
    gamma[lane] = low;
    gamma[32 + lane] = high + total_low;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) gdn_backward_scores_kernel(const float* __restrict__ qk,
                                                                       const float* __restrict__ g,
                                                                       float* __restrict__ scores) {
  __shared__ double gamma[kChunk];
  const size_t chunk = blockIdx.x;
  chunk_gamma(g + chunk * kChunk, gamma);
  const float* in = qk + chunk * kChunk * kChunk;
  float* out = scores + chunk * kChunk * kChunk;
  for (int index = threadIdx.x; index < kChunk * kChunk; index += kThreads) {
    const int i = index / kChunk, j = index % kChunk;
    out[index] = j <= i ? in[index] * expf(static_cast<float>(gamma[i] - gamma[j])) : 0.0f;
  }
}

// The bf16 rows of q and k per chunk [B,H,N,64,D] (per_chunk_rows: rows contiguous, 16-byte aligned) from
// which the gates and inverse kernels form Q K^T and K K^T themselves; chunk c = (b H + h) N + n. q is null
// where only K K^T is formed.
struct KeyRows {
  const __nv_bfloat16 *q, *k;
  ChunkRows q_at, k_at;
  int H, N;
};

// The block's chunk of k (and of q, where kQk) staged as [64][D] bf16 (row stride ld_of(D)) by cp.async, one
// committed group; the caller waits on it.
template <int D, bool kQk>
__device__ __forceinline__ void stage_key_rows(const KeyRows& r, size_t chunk, __nv_bfloat16* q_rows,
                                               __nv_bfloat16* k_rows) {
  using bf16_tiles::copy_async;
  copy_async<kChunk, D, kThreads>(k_rows, chunk_rows(r.k, r.k_at, chunk, r.H, r.N), static_cast<size_t>(r.k_at.row));
  if constexpr (kQk)
    copy_async<kChunk, D, kThreads>(q_rows, chunk_rows(r.q, r.q_at, chunk, r.H, r.N),
                                    static_cast<size_t>(r.q_at.row));
  cp_async_commit();
}

// Shared bytes of the staged rows: k's, and q's where kQk.
template <int D, bool kQk>
constexpr int key_rows_bytes() {
  return (kQk ? 2 : 1) * kChunk * bf16_tiles::ld_of(D) * static_cast<int>(sizeof(__nv_bfloat16));
}

__device__ __forceinline__ void store_element(float* to, float x) { *to = x; }
__device__ __forceinline__ void store_element(__nv_bfloat16* to, float x) { *to = __float2bfloat16_rn(x); }

// d_qk and d_kk of type Out: fp32 in place of d_scores and p (the same addresses; each element read before
// it is written, by the thread that writes it or before the block's barrier), or bf16 tensors of their own.
// The gates kernels' work once gamma holds the block's Gamma: ds_at, p_at, qk_at and kk_at (i, j, index) give
// d_scores, P, Q K^T and K K^T at (i, j) (index = 64 i + j), each read before e and d_kk are written there by
// the same thread, so Q K^T and K K^T may be read from e and d_kk themselves.
template <typename Out, typename DsAt, typename PAt, typename QkAt, typename KkAt>
__device__ __forceinline__ void gates_from_grams(size_t chunk, DsAt&& ds_at, PAt&& p_at,
                                                 const float* __restrict__ beta, Out* d_qk_out, Out* d_kk_out,
                                                 float* __restrict__ d_beta_a, float* __restrict__ dg_decay,
                                                 const double* gamma, float (*e)[kLd], float (*d_kk)[kLd],
                                                 float (*half_sums)[2], QkAt&& qk_at, KkAt&& kk_at) {
  const size_t base = chunk * kChunk * kChunk;
  static_assert(kThreads % 32 == 0 && kChunk == 64, "a warp covers half a row");
  for (int index = threadIdx.x; index < kChunk * kChunk; index += kThreads) {
    const int i = index / kChunk, j = index % kChunk;
    const float qk = qk_at(i, j, index), kk = kk_at(i, j, index);
    const float decay = j <= i ? expf(static_cast<float>(gamma[i] - gamma[j])) : 0.0f;
    const float ds = ds_at(i, j, index), b = beta[chunk * kChunk + i];
    store_element(d_qk_out + base + index, ds * decay);              // d(Q K^T)
    const float a = j < i ? -p_at(i, j, index) * decay : 0.0f;     // dA_ij D_ij
    const float akk = a * kk;
    d_kk[i][j] = a * b;
    e[i][j] = ds * qk * decay + akk * b;
    float sum = akk;  // the warp's half row
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (threadIdx.x % 32 == 0) half_sums[i][j / 32] = sum;
  }
  __syncthreads();
  // d(K K^T) + d(K K^T)^T over p, row by row (the upper half read down d_kk's columns: no bank twice), so
  // dK's two products with K are one.
  for (int index = threadIdx.x; index < kChunk * kChunk; index += kThreads) {
    const int i = index / kChunk, j = index % kChunk;
    store_element(d_kk_out + base + index, j < i ? d_kk[i][j] : d_kk[j][i]);
  }
  const int t = threadIdx.x;
  if (t < kChunk) {  // column t summed from the bottom, in place
    float sum = 0.0f;
    for (int i = kChunk - 1; i >= 0; --i) sum += e[i][t], e[i][t] = sum;
  } else if (t < 2 * kChunk) {
    const int row = t - kChunk;
    d_beta_a[chunk * kChunk + row] = half_sums[row][0] + half_sums[row][1];
  }
  __syncthreads();
  if (t < kChunk) {  // dg_t's decay part: sum_{j < t} sum_{i >= t} E_ij
    float sum = 0.0f;
    for (int j = 0; j < t; ++j) sum += e[t][j];
    dg_decay[chunk * kChunk + t] = sum;
  }
}

// The gates from Q K^T and K K^T formed [MN,64,64] in fp32.
template <typename Out>
__global__ void __launch_bounds__(kThreads) gdn_backward_gates_kernel(
    const float* d_scores, const float* __restrict__ qk, const float* p, const float* __restrict__ kk,
    const float* __restrict__ g, const float* __restrict__ beta, Out* d_qk_out, Out* d_kk_out,
    float* __restrict__ d_beta_a, float* __restrict__ dg_decay) {
  __shared__ double gamma[kChunk];
  __shared__ float e[kChunk][kLd];      // E = dD * D, then its columns summed from the bottom
  __shared__ float d_kk[kChunk][kLd];   // d(K K^T) below the diagonal, 0 on and above it
  __shared__ float half_sums[kChunk][2];  // each half row's sum of dA_ij D_ij (k_i . k_j)
  const size_t chunk = blockIdx.x, base = chunk * kChunk * kChunk;
  chunk_gamma(g + chunk * kChunk, gamma);
  gates_from_grams(
      chunk, [&](int, int, int index) { return d_scores[base + index]; },
      [&](int, int, int index) { return p[base + index]; }, beta, d_qk_out, d_kk_out, d_beta_a, dg_decay, gamma, e,
      d_kk, half_sums, [&](int, int, int index) { return qk[base + index]; },
      [&](int, int, int index) { return kk[base + index]; });
}

// The gates from the chunk's bf16 rows of q and k, its T and dT (bf16 [MN,64,64]), every [64][64] operand formed
// on the tensor cores (bf16 MMAs, fp32 accumulation): Q K^T and K K^T (a bf16 product's result, summed in
// another order) and P = T^T dT T^T with T^T dT carried as bf16 hi and lo parts into its product with T^T
// (~2^-17 relative: nearer its exact value than the rounding to bf16 that product's operand took as a
// tensor). Where kScores, d_scores = dO U^T too, from dO's and U's bf16 rows: chunk_gemm's bf16 product (the
// same MMAs over the same depth order from zero: its bits). Dynamic shared memory (gates_rows_shared_bytes):
// region A holds the staged rows of q and k, then T^T dT's parts, then E and d_kk; region B holds T and dT
// (where kScores, U's rows first), then P (fp32); region C d_scores (where kScores, dO's rows first), staged
// with the rest when the block starts.
constexpr int kLd64 = bf16_tiles::ld_of(kChunk);  // a shared [64][64] bf16 matrix's row stride

template <int D>
constexpr int gates_rows_region_a() {
  return std::max(key_rows_bytes<D, true>(), 2 * kChunk * kLd * static_cast<int>(sizeof(float)));
}
constexpr int kLdScores = kChunk + 4;  // d_scores staged [64][68] fp32: rows on 16 bytes for cp.async
constexpr int kRegionB = 2 * kChunk * kLd64 * static_cast<int>(sizeof(__nv_bfloat16));
constexpr int kRegionC = kChunk * kLdScores * static_cast<int>(sizeof(float));
template <int D>
constexpr int gates_rows_region_c() {
  return gates_rows_region_a<D>() + kRegionB;
}
template <int D>
constexpr int gates_rows_shared_bytes() {
  return gates_rows_region_c<D>() + kRegionC;
}
static_assert(kRegionB >= kChunk * kLd * sizeof(float), "P fits T and dT's memory");
static_assert(key_rows_bytes<128, false>() <= kRegionB && key_rows_bytes<128, false>() <= kRegionC,
              "U's rows fit T and dT's memory, dO's d_scores'");

// dO's and U's bf16 rows [B,H,N,64,D] (chunk c = (b H + h) N + n, as KeyRows), from which the gates kernel forms
// d_scores = dO U^T.
struct ScoreRows {
  const __nv_bfloat16 *d_o, *u;
  ChunkRows d_o_at, u_at;
};

template <int D, bool kScores>
__global__ void __launch_bounds__(kThreads) gdn_backward_gates_rows_kernel(
    KeyRows rows, ScoreRows score_rows, const float* d_scores, const __nv_bfloat16* __restrict__ inverse,
    const __nv_bfloat16* __restrict__ d_inverse, const float* __restrict__ g, const float* __restrict__ beta,
    __nv_bfloat16* d_qk_out, __nv_bfloat16* d_kk_out, float* __restrict__ d_beta_a, float* __restrict__ dg_decay) {
  using namespace bf16_tiles;
  extern __shared__ __align__(16) unsigned char shared[];
  __shared__ double gamma[kChunk];
  __shared__ float half_sums[kChunk][2];
  unsigned char* region_b = shared + gates_rows_region_a<D>();
  auto* q_rows = reinterpret_cast<Bf16*>(shared);
  auto* k_rows = q_rows + kChunk * ld_of(D);
  auto* t_rows = reinterpret_cast<Bf16*>(region_b);  // T, then with dT's memory P
  auto* dt_rows = t_rows + kChunk * kLd64;
  const SplitMatrix inner{q_rows, q_rows + kChunk * kLd64};  // T^T dT's hi and lo parts, after the rows
  auto* e = reinterpret_cast<float (*)[kLd]>(shared);  // Q K^T, then E
  auto* d_kk = e + kChunk;                             // K K^T, then d(K K^T) below the diagonal
  auto* pm = reinterpret_cast<float (*)[kLd]>(region_b);
  auto* ds = reinterpret_cast<float*>(shared + gates_rows_region_c<D>());
  const size_t chunk = blockIdx.x, base = chunk * kChunk * kChunk;
  // Each warp: the Gram tiles f = warp and warp + 8 (row block f % 4, column block f / 4), and of T^T dT and
  // P the 16 x 32 block at rows 16 (warp % 4), columns 32 (warp / 4).
  const int warp = threadIdx.x / 32, r0 = 16 * (warp % 4), c0 = 32 * (warp / 4);
  const auto stage_inverses = [&] {
    copy_async<kChunk, kChunk, kThreads>(t_rows, inverse + base, kChunk);
    copy_async<kChunk, kChunk, kThreads>(dt_rows, d_inverse + base, kChunk);
    cp_async_commit();
  };
  if constexpr (kScores) {
    // dO's rows in d_scores' memory and U's in T's: d_scores first, then T and dT in U's place.
    auto* d_o_rows = reinterpret_cast<Bf16*>(ds);
    auto* u_rows = t_rows;
    copy_async<kChunk, D, kThreads>(d_o_rows, chunk_rows(score_rows.d_o, score_rows.d_o_at, chunk, rows.H, rows.N),
                                    static_cast<size_t>(score_rows.d_o_at.row));
    copy_async<kChunk, D, kThreads>(u_rows, chunk_rows(score_rows.u, score_rows.u_at, chunk, rows.H, rows.N),
                                    static_cast<size_t>(score_rows.u_at.row));
    cp_async_commit();
    stage_key_rows<D, true>(rows, chunk, q_rows, k_rows);
    chunk_gamma(g + chunk * kChunk, gamma);  // synchronises
    cp_async_wait<1>();
    __syncthreads();
    Acc d_s[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int f = warp + 8 * u;
      gram_tile<D>(d_s[u], d_o_rows, u_rows, 16 * (f % 4), 16 * (f / 4));
    }
    __syncthreads();  // dO's and U's rows read: their memory takes d_scores, T and dT
    stage_inverses();
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int f = warp + 8 * u, gr = 16 * (f % 4), gc = 16 * (f / 4);
      for_each_pair(d_s[u], [&](int row, int col, float x0, float x1) {
        *reinterpret_cast<float2*>(ds + (gr + row) * kLdScores + gc + col) = make_float2(x0, x1);
      });
    }
    cp_async_wait<1>();  // q's and k's rows
  } else {
    stage_key_rows<D, true>(rows, chunk, q_rows, k_rows);
    copy_async<kChunk, kChunk, kThreads>(t_rows, inverse + base, kChunk);
    copy_async<kChunk, kChunk, kThreads>(dt_rows, d_inverse + base, kChunk);
    for (int v = threadIdx.x; v < kChunk * kChunk / 4; v += kThreads)  // d_scores' 16-byte vectors
      cp_async16(ds + (v / (kChunk / 4)) * kLdScores + (v % (kChunk / 4)) * 4, d_scores + base + 4 * v);
    cp_async_commit();
    chunk_gamma(g + chunk * kChunk, gamma);  // synchronises
    cp_async_wait<0>();
  }
  __syncthreads();
  Acc qk[2], kk[2], part[2];
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int f = warp + 8 * u;
    gram_tile<D>(qk[u], q_rows, k_rows, 16 * (f % 4), 16 * (f / 4));
    gram_tile<D>(kk[u], k_rows, k_rows, 16 * (f % 4), 16 * (f / 4));
    fill(part[u], 0.0f);
  }
  if constexpr (kScores) {
    cp_async_wait<0>();  // T and dT
    __syncthreads();
  }
  // T^T dT: (T^T)[r][k] = T[k][r], zero below the diagonal (T is unit lower triangular): depth from r0.
  transposed_row_block_product<2>(part, t_rows + r0, kLd64, r0, kChunk, dt_rows, kLd64, c0);
  __syncthreads();  // the rows of q and k read: their memory takes T^T dT's parts
#pragma unroll
  for (int u = 0; u < 2; ++u)
    for_each_pair(part[u], [&](int row, int col, float x0, float x1) {
      store_split<true>(inner, (r0 + row) * kLd64 + c0 + 16 * u + col, x0, x1);
    });
  __syncthreads();
  // P = (T^T dT) T^T, B = T^T read from T's rows.
#pragma unroll
  for (int u = 0; u < 2; ++u) fill(part[u], 0.0f);
  split_row_block_product<2, 2, true>(part, inner, r0 * kLd64, kLd64, kChunk, SplitMatrix{t_rows, nullptr}, kLd64, c0);
  __syncthreads();  // T, dT and T^T dT read: their memory takes P, E and d_kk
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int f = warp + 8 * u, gr = 16 * (f % 4), gc = 16 * (f / 4);
    for_each_pair(qk[u], [&](int row, int col, float x0, float x1) {
      e[gr + row][gc + col] = x0, e[gr + row][gc + col + 1] = x1;
    });
    for_each_pair(kk[u], [&](int row, int col, float x0, float x1) {
      d_kk[gr + row][gc + col] = x0, d_kk[gr + row][gc + col + 1] = x1;
    });
    for_each_pair(part[u], [&](int row, int col, float x0, float x1) {
      pm[r0 + row][c0 + 16 * u + col] = x0, pm[r0 + row][c0 + 16 * u + col + 1] = x1;
    });
  }
  __syncthreads();
  gates_from_grams(
      chunk, [&](int i, int j, int) { return ds[i * kLdScores + j]; }, [&](int i, int j, int) { return pm[i][j]; },
      beta, d_qk_out, d_kk_out, d_beta_a, dg_decay, gamma, e, d_kk, half_sums,
      [&](int i, int j, int) { return e[i][j]; }, [&](int i, int j, int) { return d_kk[i][j]; });
}

template <typename In, typename Out>  // q, k and v, and their gradients: float or __nv_bfloat16
struct RowsParams {
  const In *q, *k, *v;                                                   // [B,H,N,64,D], strided as below
  ChunkRows q_at, k_at, v_at;
  const float *d_q_decayed, *d_k_in, *d_k_decayed, *d_v_in;              // [MN,64,D]
  const float *dq_products, *dk_products;                                // [MN,64,D]
  const float *g, *beta, *d_beta_a, *dg_decay;                           // [MN,64]
  const float *chunk_decay, *d_chunk_decay;                              // [MN]
  Out *dq, *dk, *dv;                                                     // [B,T,H,D]
  float *dg, *d_beta;                                                    // [B,T,H]
  int T, H, D, num_chunks;
};

struct GateGradsParams {
  const float *q_dots, *k_in_dots, *k_decayed_dots, *v_dots;  // [MN, tiles, 64]
  const float *g, *beta, *d_beta_a, *dg_decay;                 // [MN,64]
  const float *chunk_decay, *d_chunk_decay;                    // [MN]
  float *dg, *d_beta;                                          // [B,T,H]
  int T, H, num_chunks, tiles;
};

// N consecutive elements (N = 1, 2, 4 or 8) as one load or store: fp32 as float, float2 or float4 (two for
// 8), bf16 as 2, 4, 8 or 16 bytes; widened to fp32, or rounded to nearest even as they are stored.
template <int N>
__device__ __forceinline__ void load_row(const float* from, float (&x)[N]) {
  if constexpr (N == 1) {
    x[0] = *from;
  } else if constexpr (N == 2) {
    const float2 v = *reinterpret_cast<const float2*>(from);
    x[0] = v.x, x[1] = v.y;
  } else {
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(from + i);
      x[i] = v.x, x[i + 1] = v.y, x[i + 2] = v.z, x[i + 3] = v.w;
    }
  }
}
template <int N>
__device__ __forceinline__ void load_row(const __nv_bfloat16* from, float (&x)[N]) {
  if constexpr (N == 1) {
    x[0] = __bfloat162float(*from);
  } else {
    __nv_bfloat162 pairs[N / 2];
    if constexpr (N == 2)
      *reinterpret_cast<uint32_t*>(pairs) = *reinterpret_cast<const uint32_t*>(from);
    else if constexpr (N == 4)
      *reinterpret_cast<uint2*>(pairs) = *reinterpret_cast<const uint2*>(from);
    else
      *reinterpret_cast<uint4*>(pairs) = *reinterpret_cast<const uint4*>(from);
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      const float2 v = __bfloat1622float2(pairs[i]);
      x[2 * i] = v.x, x[2 * i + 1] = v.y;
    }
  }
}
template <int N>
__device__ __forceinline__ void store_row(float* to, const float (&x)[N]) {
  if constexpr (N == 1) {
    *to = x[0];
  } else if constexpr (N == 2) {
    *reinterpret_cast<float2*>(to) = make_float2(x[0], x[1]);
  } else {
#pragma unroll
    for (int i = 0; i < N; i += 4) *reinterpret_cast<float4*>(to + i) = make_float4(x[i], x[i + 1], x[i + 2], x[i + 3]);
  }
}
template <int N>
__device__ __forceinline__ void store_row(__nv_bfloat16* to, const float (&x)[N]) {
  if constexpr (N == 1) {
    *to = __float2bfloat16_rn(x[0]);
  } else {
    __nv_bfloat162 pairs[N / 2];
#pragma unroll
    for (int i = 0; i < N / 2; ++i) pairs[i] = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
    if constexpr (N == 2)
      *reinterpret_cast<uint32_t*>(to) = *reinterpret_cast<const uint32_t*>(pairs);
    else if constexpr (N == 4)
      *reinterpret_cast<uint2*>(to) = *reinterpret_cast<const uint2*>(pairs);
    else
      *reinterpret_cast<uint4*>(to) = *reinterpret_cast<const uint4*>(pairs);
  }
}

// Where row t of chunk `chunk` ([B*H, N] flattened) lives in a [B,T,H] layout, or -1 past T.
template <typename Params>
__device__ __forceinline__ long long time_major_row(const Params& p, size_t chunk, int t) {
  const int bh = static_cast<int>(chunk / p.num_chunks), time = static_cast<int>(chunk % p.num_chunks) * kChunk + t;
  if (time >= p.T) return -1;
  return (static_cast<long long>(bh / p.H) * p.T + time) * p.H + bh % p.H;
}

// dg_t and dbeta_t of the block's chunk in the inputs' [B,T,H] layout, from each row's dGamma through e^Gamma
// (local), e^{Gamma_C - Gamma_t} (dK_d . k)_t (to_end_dot) and dbeta's row dots (beta_dot), with the gates'
// parts (d_beta_a, dg_decay) and the chunk decay's: dg_t = sum_{s >= t} local_s + sum_{i < t} to_end_dot_i +
// dg_decay_t + d(e^{Gamma_C}) e^{Gamma_C}. After a barrier over the shared arrays.
template <typename Params>
__device__ __forceinline__ void write_gate_grads(const Params& p, size_t chunk, const float* local,
                                                 const float* to_end_dot, const float* beta_dot) {
  const int t = threadIdx.x;
  if (t < kChunk) {
    const size_t at = chunk * kChunk + t;
    float from_end = 0.0f, before = 0.0f;
    for (int s = kChunk - 1; s >= t; --s) from_end += local[s];
    for (int i = 0; i < t; ++i) before += to_end_dot[i];
    const long long out_row = time_major_row(p, chunk, t);
    if (out_row >= 0) {
      p.dg[out_row] = from_end + p.dg_decay[at] + before + p.d_chunk_decay[chunk] * p.chunk_decay[chunk];
      p.d_beta[out_row] = beta_dot[t] + p.d_beta_a[at];
    }
  }
}

template <typename In, typename Out, int PER_LANE>
__global__ void __launch_bounds__(kThreads) gdn_backward_rows_kernel(const RowsParams<In, Out> p) {
  __shared__ double gamma[kChunk];
  __shared__ float local[kChunk], to_end_dot[kChunk], beta_dot[kChunk];
  const size_t chunk = blockIdx.x;
  chunk_gamma(p.g + chunk * kChunk, gamma);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const long long n = static_cast<long long>(chunk % p.num_chunks), bh = static_cast<long long>(chunk / p.num_chunks);
  const long long batch = bh / p.H, head = bh % p.H;
  for (int t = warp; t < kChunk; t += kThreads / 32) {
    const float e_gamma = static_cast<float>(exp(gamma[t]));
    const float to_end = static_cast<float>(exp(gamma[kChunk - 1] - gamma[t]));
    const float b = p.beta[chunk * kChunk + t], k_scale = b * e_gamma;
    const size_t row = (chunk * kChunk + t) * static_cast<size_t>(p.D);
    const long long out_row = time_major_row(p, chunk, t);  // padding rows: row sums only
    // Each lane takes PER_LANE consecutive elements of the row: one vector load of each operand.
    const size_t x = row + PER_LANE * lane;
    float q[PER_LANE], k[PER_LANE], v[PER_LANE], dqd[PER_LANE], dki[PER_LANE], dkd[PER_LANE], dvi[PER_LANE];
    float dqp[PER_LANE], dkp[PER_LANE];
    const auto input_row = [&](const ChunkRows& rows) {
      return batch * rows.b + head * rows.h + n * rows.n + t * rows.row + PER_LANE * lane;
    };
    load_row(p.q + input_row(p.q_at), q), load_row(p.k + input_row(p.k_at), k), load_row(p.v + input_row(p.v_at), v);
    load_row(p.d_q_decayed + x, dqd), load_row(p.d_k_in + x, dki), load_row(p.d_k_decayed + x, dkd);
    load_row(p.d_v_in + x, dvi), load_row(p.dq_products + x, dqp), load_row(p.dk_products + x, dkp);
    if (out_row >= 0) {
      const size_t y = static_cast<size_t>(out_row) * p.D + PER_LANE * lane;
      float dq[PER_LANE], dk[PER_LANE], dv[PER_LANE];
#pragma unroll
      for (int r = 0; r < PER_LANE; ++r) {
        dq[r] = dqp[r] + dqd[r] * e_gamma;
        dk[r] = dkp[r] + dki[r] * k_scale + dkd[r] * to_end;
        dv[r] = dvi[r] * b;
      }
      store_row(p.dq + y, dq), store_row(p.dk + y, dk), store_row(p.dv + y, dv);
    }
    float dot_q = 0.0f, dot_k_in = 0.0f, dot_k_decayed = 0.0f, dot_v = 0.0f;
#pragma unroll
    for (int r = 0; r < PER_LANE; ++r) {
      dot_q = fmaf(dqd[r], q[r], dot_q);
      dot_k_in = fmaf(dki[r], k[r], dot_k_in);
      dot_k_decayed = fmaf(dkd[r], k[r], dot_k_decayed);
      dot_v = fmaf(dvi[r], v[r], dot_v);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      dot_q += __shfl_xor_sync(0xffffffffu, dot_q, offset);
      dot_k_in += __shfl_xor_sync(0xffffffffu, dot_k_in, offset);
      dot_k_decayed += __shfl_xor_sync(0xffffffffu, dot_k_decayed, offset);
      dot_v += __shfl_xor_sync(0xffffffffu, dot_v, offset);
    }
    if (lane == 0) {
      local[t] = k_scale * dot_k_in + e_gamma * dot_q;  // dGamma_t through e^Gamma
      to_end_dot[t] = to_end * dot_k_decayed;
      beta_dot[t] = dot_v + e_gamma * dot_k_in;
    }
  }
  __syncthreads();
  write_gate_grads(p, chunk, local, to_end_dot, beta_dot);
}

// dg and dbeta from the row dots of the products that form dq, dk and dv (chunk_gemm's row dots, each
// row's dot in [MN, tiles, 64] parts summed here in order): the rows kernel's row sums, taken by the
// products instead.
__global__ void __launch_bounds__(kThreads) gdn_backward_gate_grads_kernel(const GateGradsParams p) {
  __shared__ double gamma[kChunk];
  __shared__ float local[kChunk], to_end_dot[kChunk], beta_dot[kChunk];
  const size_t chunk = blockIdx.x;
  chunk_gamma(p.g + chunk * kChunk, gamma);
  const int t = threadIdx.x;
  if (t < kChunk) {
    const auto dot = [&](const float* dots) {
      float sum = 0.0f;
      for (int tile = 0; tile < p.tiles; ++tile) sum += dots[(chunk * p.tiles + tile) * kChunk + t];
      return sum;
    };
    const float dot_q = dot(p.q_dots), dot_k_in = dot(p.k_in_dots), dot_k_decayed = dot(p.k_decayed_dots);
    const float dot_v = dot(p.v_dots);
    const float e_gamma = static_cast<float>(exp(gamma[t]));
    const float to_end = static_cast<float>(exp(gamma[kChunk - 1] - gamma[t]));
    const float k_scale = p.beta[chunk * kChunk + t] * e_gamma;
    local[t] = k_scale * dot_k_in + e_gamma * dot_q;
    to_end_dot[t] = to_end * dot_k_decayed;
    beta_dot[t] = dot_v + e_gamma * dot_k_in;
  }
  __syncthreads();
  write_gate_grads(p, chunk, local, to_end_dot, beta_dot);
}

// out[c] = sum of S_c * G_c over chunk c's [D][D] state (float4 loads, D*D / 4 of them): each
// state read once, no product tensor written. A fixed order of sums: deterministic.
// Four of a state's elements: fp32 as they are, or four bf16 (uint2) widened.
__device__ __forceinline__ float4 widen4(const float4& x) { return x; }
__device__ __forceinline__ float4 widen4(const uint2& x) {
  return make_float4(__uint_as_float(x.x << 16), __uint_as_float(x.x & 0xFFFF0000u), __uint_as_float(x.y << 16),
                     __uint_as_float(x.y & 0xFFFF0000u));
}

template <typename State>  // float4 (fp32 states) or uint2 (four bf16)
__global__ void __launch_bounds__(kThreads) gdn_backward_state_dot_kernel(const State* __restrict__ states,
                                                                        const float4* __restrict__ grads,
                                                                        float* __restrict__ out, int vectors) {
  __shared__ float partial[kThreads / 32];
  const size_t base = blockIdx.x * static_cast<size_t>(vectors);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < vectors; i += kThreads) {
    const float4 a = widen4(states[base + i]), b = grads[base + i];
    sum = fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, sum))));
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
    out[blockIdx.x] = total;
  }
}

// T = (I + A)^-1 of one chunk per block, A = strictly-lower(beta_i (k_i . k_j) e^{Gamma_i - Gamma_j}) formed
// as it is loaded (the expression and order of gdn_chunk_backward's torch form: (beta kk) d with d the
// fp32 exponential of the float64 difference), then the inverse and T to memory. kk [MN,64,64] (or the
// chunk's bf16 rows of k, below), g and beta [MN,64] (chunked, padding rows zero), T [MN,64,64] of type TOut:
//  - float: gdn_forward::unit_lower_inverse_64 (fp32, seven barriers);
//  - bf16, a T only bf16 products read (they would round it so as they load it): the bf16 forward's
//    unit_lower_inverse_64_tf32 (its off-diagonal blocks on TF32 MMAs, ~1e-4 absolute where keys are
//    strongly correlated, far below the rounding to bf16), T rounded to nearest even: half the traffic.
__device__ __forceinline__ float gram_gate(float kk, const float* b, const double* gamma, int i, int j) {
  return j < i ? b[i] * kk * expf(static_cast<float>(gamma[i] - gamma[j])) : 0.0f;
}

// The inverse of am (A formed, the block synchronised) into tm, then T to memory.
template <typename TOut>
__device__ __forceinline__ void inverse_to(float* am, float* tm, TOut* __restrict__ T, size_t chunk) {
  constexpr int kLdC = gdn_forward::kLdC;
  constexpr bool kBf16 = std::is_same_v<TOut, __nv_bfloat16>;
  if constexpr (kBf16)
    gdn_forward::unit_lower_inverse_64_tf32(am, tm);  // ends with a barrier
  else
    gdn_forward::unit_lower_inverse_64(am, tm);  // ends with a barrier
  TOut* out = T + chunk * kChunk * kChunk;
  for (int index = threadIdx.x; index < kChunk * kChunk / 4; index += kThreads) {
    const int row = index / (kChunk / 4), col = (index % (kChunk / 4)) * 4;
    const float4 x = *reinterpret_cast<const float4*>(tm + row * kLdC + col);
    if constexpr (kBf16) {
      const __nv_bfloat162 pairs[2] = {__floats2bfloat162_rn(x.x, x.y), __floats2bfloat162_rn(x.z, x.w)};
      reinterpret_cast<uint2*>(out)[index] = *reinterpret_cast<const uint2*>(pairs);
    } else {
      reinterpret_cast<float4*>(out)[index] = x;
    }
  }
}

template <typename TOut>
__global__ void __launch_bounds__(kThreads) gdn_backward_inverse_kernel(const float* __restrict__ kk,
                                                                        const float* __restrict__ g,
                                                                        const float* __restrict__ beta,
                                                                        TOut* __restrict__ T) {
  static_assert(kThreads == gdn_forward::kThreads && kChunk == gdn_forward::kChunk, "the forward's inverse's shape");
  constexpr int kLdC = gdn_forward::kLdC;
  __shared__ __align__(16) float am[kChunk * kLdC];
  __shared__ __align__(16) float tm[kChunk * kLdC];
  __shared__ double gamma[kChunk];
  __shared__ float b[kChunk];
  const size_t chunk = blockIdx.x;
  if (threadIdx.x < kChunk) b[threadIdx.x] = beta[chunk * kChunk + threadIdx.x];
  chunk_gamma(g + chunk * kChunk, gamma);  // synchronises
  const float4* source = reinterpret_cast<const float4*>(kk + chunk * kChunk * kChunk);
  for (int index = threadIdx.x; index < kChunk * kChunk / 4; index += kThreads) {
    const int i = index / (kChunk / 4), j0 = (index % (kChunk / 4)) * 4;
    const float4 x = source[index];
    const float row[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) am[i * kLdC + j0 + e] = gram_gate(row[e], b, gamma, i, j0 + e);
  }
  __syncthreads();
  inverse_to(am, tm, T, chunk);
}

// The same from the chunk's bf16 rows of k: K K^T's lower triangle formed on the tensor cores (bf16 MMAs, fp32
// accumulation) as A is formed; the rows are staged in tm's memory, which the inverse takes after.
template <int D, typename TOut>
__global__ void __launch_bounds__(kThreads) gdn_backward_inverse_rows_kernel(KeyRows rows,
                                                                             const float* __restrict__ g,
                                                                             const float* __restrict__ beta,
                                                                             TOut* __restrict__ T) {
  constexpr int kLdC = gdn_forward::kLdC;
  constexpr int kPoolBytes = std::max(key_rows_bytes<D, false>(), kChunk * kLdC * static_cast<int>(sizeof(float)));
  __shared__ __align__(16) float am[kChunk * kLdC];
  __shared__ __align__(16) unsigned char pool[kPoolBytes];  // k's rows, then tm
  __shared__ double gamma[kChunk];
  __shared__ float b[kChunk];
  auto* k_rows = reinterpret_cast<__nv_bfloat16*>(pool);
  const size_t chunk = blockIdx.x;
  stage_key_rows<D, false>(rows, chunk, nullptr, k_rows);
  if (threadIdx.x < kChunk) b[threadIdx.x] = beta[chunk * kChunk + threadIdx.x];
  chunk_gamma(g + chunk * kChunk, gamma);  // synchronises
  cp_async_wait<0>();
  __syncthreads();
  bf16_tiles::lower_gram_pairs<D>(k_rows, k_rows, [&](int i, int j, float x0, float x1) {
    am[i * kLdC + j] = gram_gate(x0, b, gamma, i, j);
    am[i * kLdC + j + 1] = gram_gate(x1, b, gamma, i, j + 1);
  });
  __syncthreads();  // A formed and the rows read: their memory becomes tm
  inverse_to(am, reinterpret_cast<float*>(pool), T, chunk);
}

void check_chunks(const at::Tensor& tensor, const char* op, const char* name, int64_t chunks, int64_t width) {
  check_operand(tensor, op, name, at::kFloat, 3);
  PRIME_CHECK(tensor.size(0) == chunks && tensor.size(1) == kChunk && tensor.size(2) == width, op, ": ", name, " ",
              tensor.sizes(), ", want [", chunks, ", 64, ", width, "]");
}

void check_gates(const at::Tensor& tensor, const char* op, const char* name, int64_t chunks) {
  check_operand(tensor, op, name, at::kFloat, 2);
  PRIME_CHECK(tensor.size(0) == chunks && tensor.size(1) == kChunk, op, ": ", name, " ", tensor.sizes());
}

// The rows kernel over q, k, v of type In into dq, dk, dv of type Out (the tensors checked by
// launch_gdn_backward_rows).
template <typename In, typename Out>
void launch_rows(const GdnBackwardRows& rows, const In* q, const In* k, const In* v, Out* dq, Out* dk, Out* dv,
                 int64_t T, int64_t H, int64_t D, int64_t N) {
  const auto strides_of = [](const at::Tensor& x) {
    return ChunkRows{x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
  };
  const RowsParams<In, Out> p{q,
                         k,
                         v,
                         strides_of(rows.q),
                         strides_of(rows.k),
                         strides_of(rows.v),
                         rows.d_q_decayed.data_ptr<float>(),
                         rows.d_k_in.data_ptr<float>(),
                         rows.d_k_decayed.data_ptr<float>(),
                         rows.d_v_in.data_ptr<float>(),
                         rows.dq_products.data_ptr<float>(),
                         rows.dk_products.data_ptr<float>(),
                         rows.g.data_ptr<float>(),
                         rows.beta.data_ptr<float>(),
                         rows.d_beta_a.data_ptr<float>(),
                         rows.dg_decay.data_ptr<float>(),
                         rows.chunk_decay.data_ptr<float>(),
                         rows.d_chunk_decay.data_ptr<float>(),
                         dq,
                         dk,
                         dv,
                         rows.dg.data_ptr<float>(),
                         rows.d_beta.data_ptr<float>(),
                         static_cast<int>(T),
                         static_cast<int>(H),
                         static_cast<int>(D),
                         static_cast<int>(N)};
  const auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(rows.g.size(0)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
    PRIME_CUDA_CHECK_LAUNCH("gdn_backward_rows_kernel");
  };
  switch (D) {
    case 32: launch(gdn_backward_rows_kernel<In, Out, 1>); break;
    case 64: launch(gdn_backward_rows_kernel<In, Out, 2>); break;
    case 128: launch(gdn_backward_rows_kernel<In, Out, 4>); break;
    default: launch(gdn_backward_rows_kernel<In, Out, 8>); break;
  }
}

}  // namespace

void launch_gdn_backward_scores(const at::Tensor& qk, const at::Tensor& g, const at::Tensor& scores) {
  const char* op = "gdn_backward_scores";
  const int64_t chunks = qk.size(0);
  check_chunks(qk, op, "qk", chunks, kChunk);
  check_chunks(scores, op, "scores", chunks, kChunk);
  check_gates(g, op, "g", chunks);
  if (chunks == 0) return;
  const at::cuda::CUDAGuard guard(qk.device());
  gdn_backward_scores_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      qk.data_ptr<float>(), g.data_ptr<float>(), scores.data_ptr<float>());
  PRIME_CUDA_CHECK_LAUNCH("gdn_backward_scores_kernel");
}

namespace {

// A bf16 tensor's data as the kernels take it.
const __nv_bfloat16* bits(const at::Tensor& x) { return reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()); }

// The gates kernels' operands but Q K^T and K K^T (`chunks` of them), checked; d_scores and p undefined where
// the kernel forms them (then the outputs are bf16).
void check_gate_operands(const char* op, int64_t chunks, const at::Tensor& d_scores, const at::Tensor& p,
                         const at::Tensor& g, const at::Tensor& beta, const at::Tensor& d_qk, const at::Tensor& d_kk,
                         const at::Tensor& d_beta_a, const at::Tensor& dg_decay) {
  if (d_scores.defined()) check_chunks(d_scores, op, "d_scores", chunks, kChunk);
  if (p.defined()) check_chunks(p, op, "p", chunks, kChunk);
  for (const auto& [tensor, name] : {std::pair{&g, "g"}, {&beta, "beta"}, {&d_beta_a, "d_beta_a"},
                                     {&dg_decay, "dg_decay"}})
    check_gates(*tensor, op, name, chunks);
  const bool bf16 = d_qk.scalar_type() == at::kBFloat16;
  for (const auto& [tensor, name, in, in_name] :
       {std::tuple{&d_qk, "d_qk", &d_scores, "d_scores"}, {&d_kk, "d_kk", &p, "p"}}) {
    check_operand(*tensor, op, name, bf16 ? at::kBFloat16 : at::kFloat, 3);
    PRIME_CHECK(tensor->size(0) == chunks && tensor->size(1) == kChunk && tensor->size(2) == kChunk, op, ": ", name,
                " ", tensor->sizes(), ", want [", chunks, ", 64, 64]");
    PRIME_CHECK(bf16 || (in->defined() && tensor->data_ptr() == in->data_ptr()), op, ": an fp32 ", name,
                " is written in place of ", in_name);
  }
}

// Calls launch(d_qk_out, d_kk_out) with the outputs' pointers as their dtype.
template <typename Launch>
void with_gate_outputs(const at::Tensor& d_qk, const at::Tensor& d_kk, Launch&& launch) {
  if (d_qk.scalar_type() == at::kBFloat16)
    launch(reinterpret_cast<__nv_bfloat16*>(d_qk.data_ptr()), reinterpret_cast<__nv_bfloat16*>(d_kk.data_ptr()));
  else
    launch(d_qk.data_ptr<float>(), d_kk.data_ptr<float>());
}

// KeyRows of q (or undefined: none) and k, checked as gdn_backward_key_rows_apply takes them; chunks their B H N.
KeyRows key_rows(const char* op, const at::Tensor& q, const at::Tensor& k, int64_t chunks) {
  PRIME_CHECK((!q.defined() || gdn_backward_key_rows_apply(q, k)) && gdn_backward_key_rows_apply(k, k), op,
              ": q and k must be bf16 CUDA rows [B,H,N,64,D] of head dim 32, 64 or 128, each row contiguous and on ",
              "16 bytes (q ", q.defined() ? q.sizes() : at::IntArrayRef{}, ", k ", k.sizes(), ")");
  PRIME_CHECK(k.size(0) * k.size(1) * k.size(2) == chunks, op, ": k ", k.sizes(), " holds ",
              k.size(0) * k.size(1) * k.size(2), " chunks, want ", chunks);
  return KeyRows{q.defined() ? bits(q) : nullptr,       bits(k), q.defined() ? chunk_rows_of(q) : ChunkRows{},
                 chunk_rows_of(k), static_cast<int>(k.size(1)), static_cast<int>(k.size(2))};
}

// Calls launch(kernel instance for head dim D) for D = 32, 64 or 128.
template <typename Launch>
void with_head_dim(int64_t D, Launch&& launch) {
  switch (D) {
    case 32: launch(std::integral_constant<int, 32>{}); break;
    case 64: launch(std::integral_constant<int, 64>{}); break;
    default: launch(std::integral_constant<int, 128>{}); break;
  }
}

}  // namespace

bool gdn_backward_key_rows_apply(const at::Tensor& q, const at::Tensor& k) {
  if (!q.defined() || !k.defined() || !q.is_cuda() || q.scalar_type() != at::kBFloat16 || q.dim() != 5 ||
      q.sizes() != k.sizes() || q.scalar_type() != k.scalar_type() || q.device() != k.device())
    return false;
  const int64_t D = q.size(4);
  if (q.size(3) != kChunk || (D != 32 && D != 64 && D != 128)) return false;
  for (const at::Tensor* x : {&q, &k}) {
    if (x->stride(4) != 1 || reinterpret_cast<uintptr_t>(x->data_ptr()) % 16 != 0) return false;
    for (int64_t dim = 0; dim < 4; ++dim)
      if (x->stride(dim) % 8 != 0) return false;
  }
  return true;
}

void launch_gdn_backward_gates(const at::Tensor& d_scores, const at::Tensor& qk, const at::Tensor& p,
                               const at::Tensor& kk, const at::Tensor& g, const at::Tensor& beta,
                               const at::Tensor& d_qk, const at::Tensor& d_kk, const at::Tensor& d_beta_a,
                               const at::Tensor& dg_decay) {
  const char* op = "gdn_backward_gates";
  const int64_t chunks = qk.size(0);
  for (const auto& [tensor, name] : {std::pair{&qk, "qk"}, {&kk, "kk"}}) check_chunks(*tensor, op, name, chunks, kChunk);
  check_gate_operands(op, chunks, d_scores, p, g, beta, d_qk, d_kk, d_beta_a, dg_decay);
  if (chunks == 0) return;
  const at::cuda::CUDAGuard guard(qk.device());
  with_gate_outputs(d_qk, d_kk, [&](auto* qk_out, auto* kk_out) {
    gdn_backward_gates_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        d_scores.data_ptr<float>(), qk.data_ptr<float>(), p.data_ptr<float>(), kk.data_ptr<float>(),
        g.data_ptr<float>(), beta.data_ptr<float>(), qk_out, kk_out, d_beta_a.data_ptr<float>(),
        dg_decay.data_ptr<float>());
    PRIME_CUDA_CHECK_LAUNCH("gdn_backward_gates_kernel");
  });
}

void launch_gdn_backward_gates_from_rows(const at::Tensor& d_scores, const GdnScoreRows& score_rows,
                                         const at::Tensor& q, const at::Tensor& k, const at::Tensor& inverse,
                                         const at::Tensor& d_inverse, const at::Tensor& g, const at::Tensor& beta,
                                         const at::Tensor& d_qk, const at::Tensor& d_kk, const at::Tensor& d_beta_a,
                                         const at::Tensor& dg_decay) {
  const char* op = "gdn_backward_gates_from_rows";
  const int64_t chunks = d_qk.size(0);
  PRIME_CHECK(q.defined(), op, ": q is undefined");
  const bool scores_in_kernel = !d_scores.defined();
  PRIME_CHECK(score_rows.d_o.defined() == scores_in_kernel && score_rows.u.defined() == scores_in_kernel, op,
              ": give either d_scores or dO's and U's rows");
  const KeyRows rows = key_rows(op, q, k, chunks);
  ScoreRows scores{};
  if (scores_in_kernel) {
    PRIME_CHECK(gdn_backward_key_rows_apply(score_rows.d_o, score_rows.u) && score_rows.d_o.sizes() == q.sizes(), op,
                ": dO and U must be bf16 CUDA rows of q's sizes ", q.sizes(), ", each row contiguous and on 16 bytes ",
                "(dO ", score_rows.d_o.sizes(), ", U ", score_rows.u.sizes(), ")");
    scores = ScoreRows{bits(score_rows.d_o), bits(score_rows.u), chunk_rows_of(score_rows.d_o),
                       chunk_rows_of(score_rows.u)};
  }
  for (const auto& [tensor, name] : {std::pair{&inverse, "T"}, {&d_inverse, "dT"}}) {
    check_operand(*tensor, op, name, at::kBFloat16, 3);
    PRIME_CHECK(tensor->size(0) == chunks && tensor->size(1) == kChunk && tensor->size(2) == kChunk, op, ": ", name,
                " ", tensor->sizes(), ", want [", chunks, ", 64, 64]");
    check_aligned(*tensor, op, name, 16);
  }
  check_gate_operands(op, chunks, d_scores, at::Tensor(), g, beta, d_qk, d_kk, d_beta_a, dg_decay);
  if (!scores_in_kernel) check_aligned(d_scores, op, "d_scores", 16);
  if (chunks == 0) return;
  const at::cuda::CUDAGuard guard(q.device());
  const auto launch = [&](auto kernel, int bytes) {
    PRIME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    kernel<<<static_cast<unsigned>(chunks), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
        rows, scores, scores_in_kernel ? nullptr : d_scores.data_ptr<float>(), bits(inverse), bits(d_inverse),
        g.data_ptr<float>(), beta.data_ptr<float>(), reinterpret_cast<__nv_bfloat16*>(d_qk.data_ptr()),
        reinterpret_cast<__nv_bfloat16*>(d_kk.data_ptr()), d_beta_a.data_ptr<float>(), dg_decay.data_ptr<float>());
    PRIME_CUDA_CHECK_LAUNCH("gdn_backward_gates_rows_kernel");
  };
  with_head_dim(q.size(4), [&](auto head_dim) {
    constexpr int D = decltype(head_dim)::value;
    if (scores_in_kernel)
      launch(gdn_backward_gates_rows_kernel<D, true>, gates_rows_shared_bytes<D>());
    else
      launch(gdn_backward_gates_rows_kernel<D, false>, gates_rows_shared_bytes<D>());
  });
}

void launch_gdn_backward_rows(const GdnBackwardRows& rows) {
  const char* op = "gdn_backward_rows";
  const int64_t chunks = rows.g.size(0), D = rows.q.size(-1);
  PRIME_CHECK(D == 32 || D == 64 || D == 128 || D == 256, op, ": head dim ", D, " is not 32, 64, 128 or 256");
  const at::ScalarType inputs = rows.q.scalar_type();
  PRIME_CHECK(inputs == at::kFloat || inputs == at::kBFloat16, op, ": q is ", inputs, ", want fp32 or bf16");
  for (const auto& [tensor, name] :
       {std::pair{&rows.d_q_decayed, "d_q_decayed"}, {&rows.d_k_in, "d_k_in"}, {&rows.d_k_decayed, "d_k_decayed"},
        {&rows.d_v_in, "d_v_in"}, {&rows.dq_products, "dq_products"}, {&rows.dk_products, "dk_products"}})
    check_chunks(*tensor, op, name, chunks, D);
  for (const auto& [tensor, name] : {std::pair{&rows.g, "g"}, {&rows.beta, "beta"}, {&rows.d_beta_a, "d_beta_a"},
                                     {&rows.dg_decay, "dg_decay"}})
    check_gates(*tensor, op, name, chunks);
  for (const auto& [tensor, name] :
       {std::pair{&rows.chunk_decay, "chunk_decay"}, {&rows.d_chunk_decay, "d_chunk_decay"}}) {
    check_operand(*tensor, op, name, at::kFloat, 1);
    PRIME_CHECK(tensor->size(0) == chunks, op, ": ", name, " ", tensor->sizes());
  }
  const at::ScalarType grads = rows.dq.scalar_type();
  PRIME_CHECK(grads == at::kFloat || grads == at::kBFloat16, op, ": dq is ", grads, ", want fp32 or bf16");
  check_operand(rows.dq, op, "dq", grads, 4);
  const int64_t B = rows.dq.size(0), T = rows.dq.size(1), H = rows.dq.size(2);
  const int64_t N = (T + kChunk - 1) / kChunk;
  PRIME_CHECK(rows.dq.size(3) == D && B * H * N == chunks, op, ": dq ", rows.dq.sizes(), " for ", chunks,
              " chunks of head dim ", D);
  // q, k and v per chunk, [B,H,N,64,D], in place or copied: each row contiguous and on a vector of the lanes'
  // loads (their strides multiples of D / 32 elements).
  const int64_t per_lane = D / 32;
  for (const auto& [tensor, name] : {std::pair{&rows.q, "q"}, {&rows.k, "k"}, {&rows.v, "v"}}) {
    PRIME_CHECK(tensor->defined() && tensor->is_cuda() && tensor->scalar_type() == inputs, op, ": ", name,
                " must be a CUDA tensor of q's dtype");
    PRIME_CHECK(tensor->sizes() == at::IntArrayRef({B, H, N, kChunk, D}), op, ": ", name, " ", tensor->sizes(),
                ", want [", B, ", ", H, ", ", N, ", 64, ", D, "]");
    PRIME_CHECK(tensor->stride(4) == 1, op, ": ", name, "'s rows must be contiguous");
    for (int64_t dim = 0; dim < 4; ++dim)
      PRIME_CHECK(tensor->stride(dim) % per_lane == 0, op, ": ", name, "'s strides ", tensor->strides(),
                  " must be multiples of ", per_lane);
  }
  for (const auto& [tensor, name] : {std::pair{&rows.dk, "dk"}, {&rows.dv, "dv"}}) {
    check_operand(*tensor, op, name, grads, 4);
    PRIME_CHECK(tensor->sizes() == rows.dq.sizes(), op, ": ", name, " ", tensor->sizes(), " vs dq ", rows.dq.sizes());
  }
  for (const auto& [tensor, name] : {std::pair{&rows.dg, "dg"}, {&rows.d_beta, "d_beta"}}) {
    check_operand(*tensor, op, name, at::kFloat, 3);
    PRIME_CHECK(tensor->sizes() == rows.dq.sizes().slice(0, 3), op, ": ", name, " ", tensor->sizes());
  }
  // Each lane moves a row's D / 32 consecutive elements as one vector (16 bytes at most).
  for (const auto& [tensor, name] :
       {std::pair{&rows.q, "q"}, {&rows.k, "k"}, {&rows.v, "v"}, {&rows.d_q_decayed, "d_q_decayed"},
        {&rows.d_k_in, "d_k_in"}, {&rows.d_k_decayed, "d_k_decayed"}, {&rows.d_v_in, "d_v_in"},
        {&rows.dq_products, "dq_products"}, {&rows.dk_products, "dk_products"}, {&rows.dq, "dq"}, {&rows.dk, "dk"},
        {&rows.dv, "dv"}})
    check_aligned(*tensor, op, name, std::min<size_t>(16, static_cast<size_t>(D / 32) * tensor->element_size()));
  if (chunks == 0) return;
  const at::cuda::CUDAGuard guard(rows.q.device());
  const auto with_grads = [&](const auto* q, const auto* k, const auto* v) {
    if (grads == at::kBFloat16) {
      const auto out = [](const at::Tensor& t) { return reinterpret_cast<__nv_bfloat16*>(t.data_ptr<at::BFloat16>()); };
      launch_rows(rows, q, k, v, out(rows.dq), out(rows.dk), out(rows.dv), T, H, D, N);
    } else {
      launch_rows(rows, q, k, v, rows.dq.data_ptr<float>(), rows.dk.data_ptr<float>(), rows.dv.data_ptr<float>(), T,
                  H, D, N);
    }
  };
  if (inputs == at::kBFloat16) {
    const auto in = [](const at::Tensor& t) { return reinterpret_cast<const __nv_bfloat16*>(t.data_ptr<at::BFloat16>()); };
    with_grads(in(rows.q), in(rows.k), in(rows.v));
  } else {
    with_grads(rows.q.data_ptr<float>(), rows.k.data_ptr<float>(), rows.v.data_ptr<float>());
  }
}

void launch_gdn_backward_gate_grads(const GdnBackwardGateGrads& gates) {
  const char* op = "gdn_backward_gate_grads";
  const int64_t chunks = gates.g.size(0);
  for (const auto& [tensor, name] : {std::pair{&gates.g, "g"}, {&gates.beta, "beta"}, {&gates.d_beta_a, "d_beta_a"},
                                     {&gates.dg_decay, "dg_decay"}})
    check_gates(*tensor, op, name, chunks);
  const int64_t tiles = gates.q_dots.size(1);
  for (const auto& [tensor, name] : {std::pair{&gates.q_dots, "q_dots"}, {&gates.k_in_dots, "k_in_dots"},
                                     {&gates.k_decayed_dots, "k_decayed_dots"}, {&gates.v_dots, "v_dots"}}) {
    check_operand(*tensor, op, name, at::kFloat, 3);
    PRIME_CHECK(tensor->sizes() == at::IntArrayRef({chunks, tiles, kChunk}), op, ": ", name, " ", tensor->sizes(),
                ", want [", chunks, ", ", tiles, ", 64]");
  }
  for (const auto& [tensor, name] :
       {std::pair{&gates.chunk_decay, "chunk_decay"}, {&gates.d_chunk_decay, "d_chunk_decay"}}) {
    check_operand(*tensor, op, name, at::kFloat, 1);
    PRIME_CHECK(tensor->size(0) == chunks, op, ": ", name, " ", tensor->sizes());
  }
  check_operand(gates.dg, op, "dg", at::kFloat, 3);
  check_operand(gates.d_beta, op, "d_beta", at::kFloat, 3);
  const int64_t B = gates.dg.size(0), T = gates.dg.size(1), H = gates.dg.size(2);
  const int64_t N = (T + kChunk - 1) / kChunk;
  PRIME_CHECK(gates.d_beta.sizes() == gates.dg.sizes() && B * H * N == chunks, op, ": dg ", gates.dg.sizes(),
              " and d_beta ", gates.d_beta.sizes(), " for ", chunks, " chunks");
  if (chunks == 0) return;
  const at::cuda::CUDAGuard guard(gates.g.device());
  const GateGradsParams p{gates.q_dots.data_ptr<float>(),       gates.k_in_dots.data_ptr<float>(),
                          gates.k_decayed_dots.data_ptr<float>(), gates.v_dots.data_ptr<float>(),
                          gates.g.data_ptr<float>(),            gates.beta.data_ptr<float>(),
                          gates.d_beta_a.data_ptr<float>(),     gates.dg_decay.data_ptr<float>(),
                          gates.chunk_decay.data_ptr<float>(),  gates.d_chunk_decay.data_ptr<float>(),
                          gates.dg.data_ptr<float>(),           gates.d_beta.data_ptr<float>(),
                          static_cast<int>(T),                  static_cast<int>(H),
                          static_cast<int>(N),                  static_cast<int>(tiles)};
  gdn_backward_gate_grads_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  PRIME_CUDA_CHECK_LAUNCH("gdn_backward_gate_grads_kernel");
}

namespace {

void check_inverse_gates(const char* op, int64_t chunks, const at::Tensor& g, const at::Tensor& beta,
                         const at::Tensor& T) {
  check_operand(T, op, "T", T.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat, 3);
  PRIME_CHECK(T.size(0) == chunks && T.size(1) == kChunk && T.size(2) == kChunk, op, ": T ", T.sizes(), ", want [",
              chunks, ", 64, 64]");
  check_gates(g, op, "g", chunks);
  check_gates(beta, op, "beta", chunks);
  check_aligned(T, op, "T", 16);
}

// Calls launch(T's pointer as its dtype).
template <typename Launch>
void with_inverse_output(const at::Tensor& T, Launch&& launch) {
  if (T.scalar_type() == at::kBFloat16)
    launch(reinterpret_cast<__nv_bfloat16*>(T.data_ptr()));
  else
    launch(T.data_ptr<float>());
}

}  // namespace

void launch_gdn_backward_inverse(const at::Tensor& kk, const at::Tensor& g, const at::Tensor& beta,
                                 const at::Tensor& T) {
  const char* op = "gdn_backward_inverse";
  const int64_t chunks = kk.size(0);
  check_chunks(kk, op, "kk", chunks, kChunk);
  check_aligned(kk, op, "kk", 16);
  check_inverse_gates(op, chunks, g, beta, T);
  if (chunks == 0) return;
  const at::cuda::CUDAGuard guard(kk.device());
  with_inverse_output(T, [&](auto* out) {
    gdn_backward_inverse_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        kk.data_ptr<float>(), g.data_ptr<float>(), beta.data_ptr<float>(), out);
    PRIME_CUDA_CHECK_LAUNCH("gdn_backward_inverse_kernel");
  });
}

void launch_gdn_backward_inverse_from_rows(const at::Tensor& k, const at::Tensor& g, const at::Tensor& beta,
                                           const at::Tensor& T) {
  const char* op = "gdn_backward_inverse_from_rows";
  const int64_t chunks = g.size(0);
  const KeyRows rows = key_rows(op, at::Tensor(), k, chunks);
  check_inverse_gates(op, chunks, g, beta, T);
  if (chunks == 0) return;
  const at::cuda::CUDAGuard guard(k.device());
  with_head_dim(k.size(4), [&](auto head_dim) {
    with_inverse_output(T, [&](auto* out) {
      using TOut = std::remove_pointer_t<decltype(out)>;
      gdn_backward_inverse_rows_kernel<decltype(head_dim)::value, TOut>
          <<<static_cast<unsigned>(chunks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              rows, g.data_ptr<float>(), beta.data_ptr<float>(), out);
      PRIME_CUDA_CHECK_LAUNCH("gdn_backward_inverse_rows_kernel");
    });
  });
}

void launch_gdn_backward_state_dot(const at::Tensor& states, const at::Tensor& grads, const at::Tensor& out) {
  const char* op = "gdn_backward_state_dot";
  const bool bf16 = states.scalar_type() == at::kBFloat16;
  check_operand(states, op, "states", bf16 ? at::kBFloat16 : at::kFloat, 3);
  check_operand(grads, op, "grads", at::kFloat, 3);
  check_operand(out, op, "out", at::kFloat, 1);
  const int64_t chunks = states.size(0), elements = states.size(1) * states.size(2);
  PRIME_CHECK(grads.sizes() == states.sizes() && out.size(0) == chunks && elements % 4 == 0, op, ": states ",
              states.sizes(), ", grads ", grads.sizes(), ", out ", out.sizes(), " (a state's size a multiple of 4)");
  check_aligned(states, op, "states", bf16 ? 8 : 16);
  check_aligned(grads, op, "grads", 16);
  if (chunks == 0) return;
  const at::cuda::CUDAGuard guard(states.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto grads4 = reinterpret_cast<const float4*>(grads.data_ptr<float>());
  const int vectors = static_cast<int>(elements / 4);
  if (bf16)
    gdn_backward_state_dot_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(
        reinterpret_cast<const uint2*>(states.data_ptr()), grads4, out.data_ptr<float>(), vectors);
  else
    gdn_backward_state_dot_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(states.data_ptr<float>()), grads4, out.data_ptr<float>(), vectors);
  PRIME_CUDA_CHECK_LAUNCH("gdn_backward_state_dot_kernel");
}

}  // namespace prime::kernels::detail
