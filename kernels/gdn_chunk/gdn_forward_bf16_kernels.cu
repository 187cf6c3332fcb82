// CUDA kernels of GDN's fused chunked forward on bf16 operands (see gdn_chunk.h,
// gdn_chunk_forward): the fp32 forward's three steps (gdn_forward_kernels.cu) with every product
// on bf16 tensor cores (mma.sync, fp32 accumulation; bf16_tiles.cuh), the per-chunk intermediates (W, U',
// U_n, K_d, the states entering each chunk) stored as bf16, and the gates, their prefix sums,
// the (I + A)^-1 solve (fp32 diagonal blocks, off-diagonal blocks on TF32 tensor cores) and the
// state carried from chunk to chunk kept in fp32.
//  - prep, one block per (chunk, batch and head): A = strictly-lower(beta K K^T * e^{Gi - Gj}),
//    T = (I + A)^-1 (unit_lower_inverse_64_tf32), W = T diag(beta e^G) K, U' = T diag(beta) V (T in
//    bf16, or for training split into hi + lo, two MMAs per step: experiments/gdn_bf16_backward; then
//    the hi part, bf16(T), may go to memory too: the backward's bf16 products read it);
//    for the split walk also K_d = diag(e^{G_end - G}) K and e^{G_end}, for the fused walk the
//    chunk's G (float64).
//  - the fused walk (gdn_forward_bf16_walk_kernels.cu, where its block fits the device): the scan
//    and the output below in one kernel, one block per batch and head.
//  - the split walk:
//    - scan, one block per (batch and head, 64 value columns): the state tile S [D][64] lives in
//      the warps' fp32 accumulator fragments across all chunks. Per chunk n: states[n] = bf16(S);
//      U_n = U'_n - W_n S (written over U'); S = e^{G_end} S + K_d^T U_n. The next chunk's W, U'
//      and K_d stream into shared memory (cp.async) while this chunk computes.
//    - output, one block per (chunk, batch and head): O = diag(e^G) Q S_n + (Q K^T * e^{Gi - Gj},
//      j <= i) U_n; S_n and U_n stream in while the scores are formed.
// Chunks are 64 steps; rows past T are zeros.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/common/bf16_split_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/restart_segments.cuh"
#include "kernels/common/wgmma_device.h"
#include "kernels/gdn_chunk/gdn_chunk_launch.h"
#include "kernels/gdn_chunk/gdn_forward_bf16.cuh"
#include "kernels/gdn_chunk/gdn_forward_common.cuh"

namespace prime::kernels::detail {

namespace {

using namespace bf16_tiles;
using gdn_forward::kChunk;
using gdn_forward::kLdC;
using gdn_forward::kThreads;
using gdn_forward::kWarps;
using gdn_forward_bf16::Bf16Params;
using gdn_forward_bf16::kLdT;
using gdn_forward_bf16::load_chunk_rows;

template <int D>
constexpr size_t prep_shared_bytes() {
  return kChunk * (sizeof(double) + 2 * sizeof(float)) + 2 * kChunk * kLdC * sizeof(float) +
         2 * kChunk * ld_of(D) * sizeof(Bf16);
}
// bf16(T) fits where A was (71.7 KB in all at D = 128: three blocks per SM).
static_assert(kChunk * kLdT * sizeof(Bf16) <= kChunk * kLdC * sizeof(float), "prep's alias");

// SplitT: W's and U''s products take T as hi + lo (bf16x2; the lo part where T's fp32 values were, once
// read), so that training's saved W and U' carry T's rounding no more (experiments/gdn_bf16_backward:
// the decay parameters' gradient at long sequences with slowly decaying gates).
template <int D, int NT, bool SplitT>
__global__ void __launch_bounds__(kThreads, 3) gdn_forward_prep_bf16_kernel(const Bf16Params p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  constexpr int ld = ld_of(D);
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* gates = reinterpret_cast<float*>(gamma + kChunk);   // [64]
  float* beta = gates + kChunk;                              // [64]
  float* am = beta + kChunk;                                 // [64][kLdC]: K K^T, then A
  float* tm = am + kChunk * kLdC;                            // [64][kLdC]: T
  Bf16* ks = reinterpret_cast<Bf16*>(tm + kChunk * kLdC);    // [64][ld]: K, then diag(beta e^G) K
  Bf16* vs = ks + kChunk * ld;                               // [64][ld]: V, then diag(beta) V
  Bf16* tb = reinterpret_cast<Bf16*>(am);                    // [64][kLdT]: bf16(T), once A is spent
  Bf16* tl = reinterpret_cast<Bf16*>(tm);                    // [64][kLdT]: SplitT, bf16(T - bf16(T))
  const int warp = threadIdx.x / 32;
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh % p.H, t0 = chunk * kChunk;
  const size_t row0 = (static_cast<size_t>(bh) * p.num_chunks + chunk) * kChunk;  // the chunk's buffer rows
  load_chunk_rows<D>(ks, p.k, p, b, t0, h);
  load_chunk_rows<D>(vs, p.v, p, b, t0, h);
  gdn_forward::chunk_gates(p.g, p.beta, p.T, p.H, b, h, t0, gamma, gates, beta);  // synchronises

  // A = strictly-lower(beta K K^T o e^{Gi - Gj}), formed from the accumulators.
  lower_gram_pairs<D>(ks, ks, [&](int i, int j, float x0, float x1) {
    const float a0 = j < i ? beta[i] * expf(static_cast<float>(gamma[i] - gamma[j])) * x0 : 0.0f;
    const float a1 = j + 1 < i ? beta[i] * expf(static_cast<float>(gamma[i] - gamma[j + 1])) * x1 : 0.0f;
    *reinterpret_cast<float2*>(am + i * kLdC + j) = make_float2(a0, a1);
  });
  if (p.k_decayed != nullptr) {  // the split walk's K_d rows and e^{G_end} to global
    constexpr int kVectors = D / 8;
    for (int index = threadIdx.x; index < kChunk * kVectors; index += kThreads) {
      const int t = index / kVectors, i = (index % kVectors) * 8;
      float values[8];
      unpack8(*reinterpret_cast<const uint4*>(ks + t * ld + i), values);
      const float f = expf(static_cast<float>(gamma[kChunk - 1] - gamma[t]));
#pragma unroll
      for (int e = 0; e < 8; ++e) values[e] *= f;
      *reinterpret_cast<uint4*>(p.k_decayed + (row0 + t) * D + i) = pack8(values);
    }
  } else if (threadIdx.x < kChunk) {  // the fused walk's G
    p.gamma[row0 + threadIdx.x] = gamma[threadIdx.x];
  }
  if (p.decay != nullptr && threadIdx.x == 0)  // e^{G_end}: the split walk's, and the backward's
    p.decay[static_cast<size_t>(bh) * p.num_chunks + chunk] = expf(static_cast<float>(gamma[kChunk - 1]));
  __syncthreads();
  scale_rows<kChunk, D, kThreads>(ks, [&](int t) { return beta[t] * expf(static_cast<float>(gamma[t])); });
  scale_rows<kChunk, D, kThreads>(vs, [&](int t) { return beta[t]; });
  gdn_forward::unit_lower_inverse_64_tf32(am, tm);  // ends with a barrier: A is spent
  if constexpr (SplitT) {
    // T's lo parts wait in registers until every thread has read its fp32 values, then take their place.
    constexpr int kVectors = kChunk * kChunk / 8, kPerThread = (kVectors + kThreads - 1) / kThreads;
    uint4 lo[kPerThread];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int index = threadIdx.x + i * kThreads;
      if (index >= kVectors) continue;
      const int r = index / (kChunk / 8), c = (index % (kChunk / 8)) * 8;
      const uint4 hi = pack8(tm + r * kLdC + c);
      float rounded[8], residual[8];
      unpack8(hi, rounded);
#pragma unroll
      for (int e = 0; e < 8; ++e) residual[e] = tm[r * kLdC + c + e] - rounded[e];
      *reinterpret_cast<uint4*>(tb + r * kLdT + c) = hi;
      if (p.inverse != nullptr) *reinterpret_cast<uint4*>(p.inverse + (row0 + r) * kChunk + c) = hi;
      lo[i] = pack8(residual);
    }
    __syncthreads();  // every fp32 value of T is read
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int index = threadIdx.x + i * kThreads;
      if (index >= kVectors) continue;
      const int r = index / (kChunk / 8), c = (index % (kChunk / 8)) * 8;
      *reinterpret_cast<uint4*>(tl + r * kLdT + c) = lo[i];
    }
  } else {
    for (int index = threadIdx.x; index < kChunk * kChunk / 8; index += kThreads) {
      const int r = index / (kChunk / 8), c = (index % (kChunk / 8)) * 8;
      *reinterpret_cast<uint4*>(tb + r * kLdT + c) = pack8(tm + r * kLdC + c);
    }
  }
  __syncthreads();  // bf16(T) formed
  // W = T diag(beta e^G) K and U' = T diag(beta) V. Tasks are (matrix, 16 NT-column group,
  // 16-row block r); T's row block r has columns < 16 (r + 1) only. A warp's tasks alternate
  // between row blocks r and 3 - r, so the warps' depths balance.
  constexpr int kGroups = D / (16 * NT), kTasks = 2 * kGroups * 4;
  for (int task = warp; task < kTasks; task += kWarps) {
    const int r_base = task % 4, matrix = (task / 4) % 2, group = task / 8;
    const int r = group % 2 == 0 ? r_base : 3 - r_base, col0 = group * 16 * NT;
    const Bf16* rhs = matrix == 0 ? ks : vs;
    Acc acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) fill(acc[t], 0.0f);
    if constexpr (SplitT)
      split_row_block_product<2, NT>(acc, SplitMatrix{tb, tl}, 16 * r * kLdT, kLdT, 16 * (r + 1),
                                     SplitMatrix{const_cast<Bf16*>(rhs), nullptr}, ld, col0);
    else
      row_block_product<NT>(acc, tb + 16 * r * kLdT, kLdT, 16 * (r + 1), rhs, ld, col0);
    Bf16* out = (matrix == 0 ? p.w : p.u) + (row0 + 16 * r) * D + col0;
#pragma unroll
    for (int t = 0; t < NT; ++t)  // bf16 pairs straight from the registers: no pass through shared memory
      for_each_pair(acc[t], [&](int row, int col, float x0, float x1) {
        *reinterpret_cast<__nv_bfloat162*>(out + row * D + 16 * t + col) = __floats2bfloat162_rn(x0, x1);
      });
  }
}

template <int D, int CW>
constexpr size_t scan_shared_bytes() {
  return (2 * kChunk * ld_of(D) + 2 * kChunk * ld_of(CW) + D * ld_of(CW)) * sizeof(Bf16);
}

// CW value columns per block (64, or 32 for D = 32); accumulators go to bf16 memory from the
// registers (for_each_pair). Warp w's state tiles are f = w + 8 i (key
// rows 16 (f / CB), columns 16 (f % CB): one column block per warp, so the U_n operand of the
// state update is loaded once per k-step); its U_n tiles are f = kUPerWarp w + i (one row block
// per warp: the W_n operand is loaded once per k-step).
template <int D, int CW>
__global__ void __launch_bounds__(kThreads, 2) gdn_forward_scan_bf16_kernel(const Bf16Params p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  constexpr int ld = ld_of(D), ldc = ld_of(CW), CB = CW / 16;
  constexpr int kStateTiles = (D / 16) * CB, kStatePerWarp = (kStateTiles + kWarps - 1) / kWarps;
  constexpr int kUTiles = (kChunk / 16) * CB, kUPerWarp = kUTiles / kWarps;
  static_assert(kWarps % CB == 0 && kUTiles % kWarps == 0 && CB % kUPerWarp == 0, "tile assignment");
  Bf16* ws = reinterpret_cast<Bf16*>(shared_bytes);  // [64][ld]: W_n
  Bf16* kds = ws + kChunk * ld;                      // [64][ld]: K_d n
  Bf16* ups = kds + kChunk * ld;                     // [64][ldc]: the block's columns of U'_n
  Bf16* ub = ups + kChunk * ldc;                     // [64][ldc]: U_n
  Bf16* sb = ub + kChunk * ldc;                      // [D][ldc]: bf16(S)
  const int warp = threadIdx.x / 32;
  const int col0 = blockIdx.x * CW, N = p.num_chunks;
  const size_t m = blockIdx.y, state_size = static_cast<size_t>(D) * D;
  const auto chunk_rows = [&](int n) { return (m * N + n) * static_cast<size_t>(kChunk) * D; };
  const auto fetch_w = [&](int n) {  // W_n and the block's columns of U'_n
    copy_async<kChunk, D, kThreads>(ws, p.w + chunk_rows(n), D);
    copy_async<kChunk, CW, kThreads>(ups, p.u + chunk_rows(n) + col0, D);
    cp_async_commit();
  };
  const auto fetch_kd = [&](int n) {
    copy_async<kChunk, D, kThreads>(kds, p.k_decayed + chunk_rows(n), D);
    cp_async_commit();
  };
  const int state_c0 = 16 * (warp % CB);
  const int u_r0 = 16 * ((kUPerWarp * warp) / CB), u_c0 = 16 * ((kUPerWarp * warp) % CB);
  // With document starts, the segments between them are walked independently (block slot
  // blockIdx.z takes its share; kernels/common/restart_segments.cuh).
  for_each_restart_segment(p.segment_begins, N, blockIdx.z, gridDim.z, [&](int begin, int end, bool first,
                                                                         bool last) {
    fetch_w(begin);
    fetch_kd(begin);
    Acc s[kStatePerWarp];
#pragma unroll
    for (int i = 0; i < kStatePerWarp; ++i) {
      const int f = warp + kWarps * i;
      if (first && f < kStateTiles && p.initial != nullptr)
        load_acc(s[i], p.initial + m * state_size + 16 * (f / CB) * D + col0 + state_c0, D);
      else
        fill(s[i], 0.0f);
    }
    // Each chunk's decay and start flag are read a chunk ahead (a global load's latency off the walk).
    float decay_next = p.decay[m * N + begin];
    bool start_next = p.starts != nullptr && p.starts[begin];
    for (int n = begin; n < end; ++n) {
      const float d = decay_next;
      const bool start = start_next;
      if (n + 1 < end) {
        decay_next = p.decay[m * N + n + 1];
        start_next = p.starts != nullptr && p.starts[n + 1];
      }
      if (start) {  // a document's first chunk (uniform over the block)
#pragma unroll
        for (int i = 0; i < kStatePerWarp; ++i) fill(s[i], 0.0f);
      }
      // bf16(S) to shared memory and to states[n].
      Bf16* states_n = p.states + (m * N + n) * state_size + col0;
#pragma unroll
      for (int i = 0; i < kStatePerWarp; ++i) {
        const int f = warp + kWarps * i;
        if (f >= kStateTiles) continue;
        const int r0 = 16 * (f / CB);
        for_each_pair(s[i], [&](int row, int col, float x0, float x1) {
          const __nv_bfloat162 pair = __floats2bfloat162_rn(x0, x1);
          *reinterpret_cast<__nv_bfloat162*>(sb + (r0 + row) * ldc + state_c0 + col) = pair;
          *reinterpret_cast<__nv_bfloat162*>(states_n + (r0 + row) * D + state_c0 + col) = pair;
        });
      }
      cp_async_wait<1>();  // W_n and U'_n (K_d n may still be in flight)
      __syncthreads();
      // U_n = U'_n - W_n S, to shared memory and over U'_n in global memory.
      Bf16* u_n = p.u + chunk_rows(n) + col0;
      {
        Acc acc[kUPerWarp];
#pragma unroll
        for (int i = 0; i < kUPerWarp; ++i) fill(acc[i], 0.0f);
#pragma unroll 4
        for (int k0 = 0; k0 < D; k0 += 16) {
          FragA a;
          load_a(a, ws + u_r0 * ld + k0, ld);
#pragma unroll
          for (int i = 0; i < kUPerWarp; ++i) {
            FragB bm;
            load_b(bm, sb + k0 * ldc + u_c0 + 16 * i, ldc);
            mma(acc[i], a, bm);
          }
        }
#pragma unroll
        for (int i = 0; i < kUPerWarp; ++i) {
          const int c0 = u_c0 + 16 * i;
          for_each_pair(acc[i], [&](int row, int col, float x0, float x1) {
            const int at = (u_r0 + row) * ldc + c0 + col;
            const float2 target = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(ups + at));
            const __nv_bfloat162 pair = __floats2bfloat162_rn(target.x - x0, target.y - x1);
            *reinterpret_cast<__nv_bfloat162*>(ub + at) = pair;
            *reinterpret_cast<__nv_bfloat162*>(u_n + (u_r0 + row) * D + c0 + col) = pair;
          });
        }
      }
      cp_async_wait<0>();  // K_d n
      __syncthreads();     // U_n complete; W_n, U'_n and bf16(S) read
      if (n + 1 < end) fetch_w(n + 1);
      // S = e^{G_end} S + K_d^T U_n: A's row k is K_d's column k (col-major view).
#pragma unroll
      for (int i = 0; i < kStatePerWarp; ++i)
#pragma unroll
        for (int e = 0; e < s[i].num_elements; ++e) s[i].x[e] *= d;
#pragma unroll
      for (int k0 = 0; k0 < kChunk; k0 += 16) {
        FragB bm;
        load_b(bm, ub + k0 * ldc + state_c0, ldc);
#pragma unroll
        for (int i = 0; i < kStatePerWarp; ++i) {
          const int f = warp + kWarps * i;
          if (f >= kStateTiles) continue;
          FragA a;  // A's row k is K_d's column k
          load_a_t(a, kds + k0 * ld + 16 * (f / CB), ld);
          mma(s[i], a, bm);
        }
      }
      __syncthreads();  // K_d n and U_n read
      if (n + 1 < end) fetch_kd(n + 1);
    }
    if (last) {
#pragma unroll
      for (int i = 0; i < kStatePerWarp; ++i) {
        const int f = warp + kWarps * i;
        if (f < kStateTiles)
          store_acc(p.final_state + m * state_size + 16 * (f / CB) * D + col0 + state_c0, s[i], D);
      }
    }
  });
}

template <int D>
constexpr size_t output_shared_bytes() {
  return kChunk * (sizeof(double) + sizeof(float)) + (3 * kChunk + D) * ld_of(D) * sizeof(Bf16) +
         kChunk * kLdT * sizeof(Bf16) + kWarps * kScratchBytes;
}

template <int D, int NT>
__global__ void __launch_bounds__(kThreads, 2) gdn_forward_output_bf16_kernel(const Bf16Params p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  constexpr int ld = ld_of(D);
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* gates = reinterpret_cast<float*>(gamma + kChunk);   // [64]
  Bf16* qs = reinterpret_cast<Bf16*>(gates + kChunk);        // [64][ld]: Q, then diag(e^G) Q
  Bf16* ks = qs + kChunk * ld;                               // [64][ld]: K
  Bf16* us = ks + kChunk * ld;                               // [64][ld]: U_n
  Bf16* ss = us + kChunk * ld;                               // [D][ld]: S_n
  Bf16* sc = ss + D * ld;                                    // [64][kLdT]: the decayed scores
  const int warp = threadIdx.x / 32;
  float* scratch = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(sc + kChunk * kLdT) + warp * kScratchBytes);
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh % p.H, t0 = chunk * kChunk;
  const size_t chunk_index = static_cast<size_t>(bh) * p.num_chunks + chunk;
  copy_async<D, D, kThreads>(ss, p.states + chunk_index * D * D, D);
  copy_async<kChunk, D, kThreads>(us, p.u + chunk_index * kChunk * D, D);
  cp_async_commit();
  load_chunk_rows<D>(qs, p.q, p, b, t0, h);
  load_chunk_rows<D>(ks, p.k, p, b, t0, h);
  gdn_forward::chunk_gates(p.g, nullptr, p.T, p.H, b, h, t0, gamma, gates, nullptr);  // synchronises

  // the scores (Q K^T) o e^{Gi - Gj}, j <= i
  decayed_causal_scores<D>(sc, kLdT, qs, ks, gamma, [](int) { return 1.0f; });
  __syncthreads();  // Q read
  scale_rows<kChunk, D, kThreads>(qs, [&](int t) { return expf(static_cast<float>(gamma[t])); });
  cp_async_wait<0>();
  __syncthreads();
  // O tiles (16-row block r, 16 NT columns): diag(e^G) Q S_n + scores U_n, the scores' row block
  // r having columns < 16 (r + 1) only.
  constexpr int kGroups = D / (16 * NT), kTasks = 4 * kGroups;
  for (int task = warp; task < kTasks; task += kWarps) {
    const int r = task % 4, col0 = (task / 4) * 16 * NT;
    Acc acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) fill(acc[t], 0.0f);
    row_block_product<NT>(acc, qs + 16 * r * ld, ld, D, ss, ld, col0);
    row_block_product<NT>(acc, sc + 16 * r * kLdT, kLdT, 16 * (r + 1), us, ld, col0);
#pragma unroll
    for (int t = 0; t < NT; ++t)
      emit_tile(acc[t], scratch, [&](int row, int col, const float* x) {
        const int time = t0 + 16 * r + row;
        if (time < p.T)
          *reinterpret_cast<uint4*>(p.o + ((static_cast<size_t>(b) * p.T + time) * p.H + h) * D + col0 + 16 * t +
                                    col) = pack8(x);
      });
  }
}

template <int D>
void launch_all(const Bf16Params& p, int64_t M, int slots, bool fused_walk, bool walk_wgmma, bool split_inverse) {
  constexpr int NT = D == 32 ? 2 : 4, CW = D == 32 ? 32 : 64;
  const dim3 per_chunk(static_cast<unsigned>(p.num_chunks), static_cast<unsigned>(M));
  if (split_inverse)
    launch_with_shared(gdn_forward_prep_bf16_kernel<D, NT, true>, per_chunk, prep_shared_bytes<D>(), kThreads, p,
                       "gdn_forward_prep_bf16_kernel");
  else
    launch_with_shared(gdn_forward_prep_bf16_kernel<D, NT, false>, per_chunk, prep_shared_bytes<D>(), kThreads, p,
                       "gdn_forward_prep_bf16_kernel");
  if (walk_wgmma) {
    gdn_forward_bf16::launch_walk_wgmma(p, M, slots);
    return;
  }
  if (fused_walk) {
    gdn_forward_bf16::launch_walk(p, M, slots, D);
    return;
  }
  const dim3 per_tile(D / CW, static_cast<unsigned>(M), static_cast<unsigned>(slots));
  launch_with_shared(gdn_forward_scan_bf16_kernel<D, CW>, per_tile, scan_shared_bytes<D, CW>(), kThreads, p,
                     "gdn_forward_scan_bf16_kernel");
  launch_with_shared(gdn_forward_output_bf16_kernel<D, NT>, per_chunk, output_shared_bytes<D>(), kThreads, p,
                     "gdn_forward_output_bf16_kernel");
}

}  // namespace

void launch_gdn_forward_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                             const at::Tensor& beta, const at::Tensor& initial, const at::Tensor& starts,
                             const GdnForwardBf16Scratch& scratch, const at::Tensor& final_state,
                             const at::Tensor& o) {
  const char* op = "gdn_forward_bf16";
  check_operand(q, op, "q", at::kBFloat16, 4);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), M = B * H;
  const int64_t N = (T + kChunk - 1) / kChunk;
  PRIME_CHECK(D == 32 || D == 64 || D == 128, op, ": head dim ", D, " is not 32, 64 or 128");
  PRIME_CHECK(M <= 65535 && N <= 2147483647, op, ": batch * heads must be <= 65535");
  const bool fused_walk = scratch.gamma.defined();
  // The warpgroup MMAs' fused walk may also keep what the backward reads (decay and states, U_n over u).
  const bool keeps = fused_walk && scratch.walk_wgmma && scratch.states.defined();
  PRIME_CHECK(fused_walk != scratch.k_decayed.defined() &&
                  (keeps || fused_walk != (scratch.decay.defined() || scratch.states.defined())),
              op, ": give gamma (the fused walk; on the warpgroup MMAs also decay and states for the backward) or ",
              "k_decayed, decay and states (the split walk)");
  for (const auto& [tensor, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}, std::pair{&o, "o"}})
    check_operand_sizes(*tensor, op, name, at::kBFloat16, q.sizes());
  check_operand_sizes(g, op, "g", at::kFloat, {B, T, H});
  check_operand_sizes(beta, op, "beta", at::kFloat, {B, T, H});
  std::vector<std::pair<const at::Tensor*, const char*>> rows = {{&scratch.w, "w"}, {&scratch.u, "u"}};
  if (fused_walk) {
    if (scratch.walk_wgmma) {  // its own block (and shared memory) instead of the mma.sync walk's
      PRIME_CHECK(gdn_forward_bf16_walk_wgmma_runs(D, q.device()), op,
                  ": the fused walk on the warpgroup MMAs needs head dim 128 on a Hopper GPU with this build's "
                  "sm_90a code, got head dim ", D);
    } else {
      PRIME_CHECK(gdn_forward_bf16_walk_fits_device(D, q.get_device()), op, ": the fused walk's block for head dim ",
                  D, " does not fit this device's shared memory");
    }
    check_operand_sizes(scratch.gamma, op, "gamma", at::kDouble, {M, N, kChunk});
    check_aligned(scratch.gamma, op, "gamma", 16);
    if (keeps) {
      check_operand_sizes(scratch.decay, op, "decay", at::kFloat, {M, N});
      check_operand_sizes(scratch.states, op, "states", at::kBFloat16, {M, N, D, D});
      check_aligned(scratch.states, op, "states", 16);
    }
  } else {
    PRIME_CHECK(!scratch.walk_wgmma, op, ": the warpgroup MMAs' walk is a fused walk: give gamma");
    rows.emplace_back(&scratch.k_decayed, "k_decayed");
    check_operand_sizes(scratch.decay, op, "decay", at::kFloat, {M, N});
    check_operand_sizes(scratch.states, op, "states", at::kBFloat16, {M, N, D, D});
    check_aligned(scratch.states, op, "states", 16);
  }
  for (const auto& [tensor, name] : rows) {
    check_operand_sizes(*tensor, op, name, at::kBFloat16, {M, N, kChunk, D});
    check_aligned(*tensor, op, name, 16);
  }
  if (scratch.inverse.defined()) {
    PRIME_CHECK(scratch.split_inverse, op, ": T goes to memory only from the split inverse (training's prep)");
    check_operand_sizes(scratch.inverse, op, "inverse", at::kBFloat16, {M, N, kChunk, kChunk});
    check_aligned(scratch.inverse, op, "inverse", 16);
  }
  check_operand_sizes(final_state, op, "final_state", at::kFloat, {M, D, D});
  if (initial.defined()) check_operand_sizes(initial, op, "initial", at::kFloat, {M, D, D});
  if (starts.defined()) check_operand_sizes(starts, op, "starts", at::kBool, {N});
  for (const auto& [tensor, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}, std::pair{&o, "o"}})
    check_aligned(*tensor, op, name, 16);
  check_aligned(final_state, op, "final_state", 32);
  if (initial.defined()) check_aligned(initial, op, "initial", 32);
  if (M == 0 || N == 0) return;
  Bf16Params p{};
  p.q = reinterpret_cast<const Bf16*>(q.data_ptr());
  p.k = reinterpret_cast<const Bf16*>(k.data_ptr());
  p.v = reinterpret_cast<const Bf16*>(v.data_ptr());
  p.g = g.data_ptr<float>();
  p.beta = beta.data_ptr<float>();
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.num_chunks = static_cast<int>(N);
  p.w = reinterpret_cast<Bf16*>(scratch.w.data_ptr());
  p.u = reinterpret_cast<Bf16*>(scratch.u.data_ptr());
  if (scratch.inverse.defined()) p.inverse = reinterpret_cast<Bf16*>(scratch.inverse.data_ptr());
  if (fused_walk) {
    p.gamma = scratch.gamma.data_ptr<double>();
    if (keeps) {
      p.decay = scratch.decay.data_ptr<float>();
      p.states = reinterpret_cast<Bf16*>(scratch.states.data_ptr());
    }
  } else {
    p.k_decayed = reinterpret_cast<Bf16*>(scratch.k_decayed.data_ptr());
    p.decay = scratch.decay.data_ptr<float>();
    p.states = reinterpret_cast<Bf16*>(scratch.states.data_ptr());
  }
  p.initial = initial.defined() ? initial.data_ptr<float>() : nullptr;
  p.final_state = final_state.data_ptr<float>();
  p.starts = starts.defined() ? starts.data_ptr<bool>() : nullptr;
  p.o = reinterpret_cast<Bf16*>(o.data_ptr());
  const at::cuda::CUDAGuard guard(q.device());
  // The walk's grid besides its segment slots: a block per batch and head (fused), or per 64 value
  // columns of each (split).
  const int64_t walk_blocks = fused_walk ? M : M * (D == 32 ? 1 : D / 64);
  const RestartSegments segments = restart_segments(starts, N, walk_blocks);
  p.segment_begins = segments.data();
  if (D == 32)
    launch_all<32>(p, M, segments.slots, fused_walk, false, scratch.split_inverse);
  else if (D == 64)
    launch_all<64>(p, M, segments.slots, fused_walk, false, scratch.split_inverse);
  else
    launch_all<128>(p, M, segments.slots, fused_walk, scratch.walk_wgmma, scratch.split_inverse);
}

bool gdn_forward_bf16_walk_fits_device(int64_t head_dim, int device) {
  return gdn_forward_bf16::walk_shared_bytes(static_cast<int>(head_dim)) <=
         at::cuda::getDeviceProperties(device)->sharedMemPerBlockOptin;
}

bool gdn_forward_bf16_walk_wgmma_runs(int64_t head_dim, const at::Device& device) {
  return head_dim == 128 && device.is_cuda() && wgmma_runs_on(device) &&
         gdn_forward_bf16::walk_wgmma_shared_bytes() <=
             at::cuda::getDeviceProperties(device.index())->sharedMemPerBlockOptin;
}

bool gdn_forward_bf16_walk_preferred(int64_t batch_heads, int64_t head_dim, int device) {
  const int64_t sms = at::cuda::getDeviceProperties(device)->multiProcessorCount;
  return gdn_forward_bf16_walk_fits_device(head_dim, device) && 5 * batch_heads >= 3 * sms;
}

}  // namespace prime::kernels::detail
