// What GDN's bf16 fused forward's kernel sources share (gdn_forward_bf16_kernels.cu: prep, and the
// split walk's scan and output; gdn_forward_bf16_walk_kernels.cu: the fused walk): the launch
// parameters, the row loads of a chunk and the fused walk's launcher.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/bf16_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/gdn_chunk/gdn_forward_common.cuh"

namespace prime::kernels::detail::gdn_forward_bf16 {

using bf16_tiles::Bf16;
constexpr int kChunk = gdn_forward::kChunk;
constexpr int kLdT = kChunk + 8;  // row stride of a [64][64] bf16 shared matrix (T, the scores)

struct Bf16Params {
  const Bf16 *q, *k, *v;          // [B,T,H,D]
  const float *g, *beta;          // [B,T,H]
  int T, H, num_chunks;
  Bf16 *w, *u;                    // [M,N,64,D]; u holds U', then (split walk, or kept) U_n
  Bf16* k_decayed;                // [M,N,64,D], split walk only (else null)
  float* decay;                   // [M,N], split walk, or kept by the warpgroup walk (else null)
  Bf16* states;                   // [M,N,D,D], split walk, or kept by the warpgroup walk (then U_n too)
  double* gamma;                  // [M,N,64], fused walk only: each chunk's prefix sums of the gates
  Bf16* inverse;                  // [M,N,64,64] or null: each chunk's T rounded to bf16 (prep, training)
  const float* initial;           // [M,D,D] or null (zeros)
  float* final_state;             // [M,D,D]
  const bool* starts;             // [N] or null
  const int* segment_begins;      // restart_segments' list for starts, or null (one segment)
  Bf16* o;                        // [B,T,H,D]
};

// The tiles of the fused walks, one block per batch and head with the state (forward S, backward its
// gradient G) [D][D] in the warps' fp32 accumulators for the whole walk: 16 warps at D = 128, 8 below.
// The state's tiles f = warp + kWarps i (row block f / CB, column block warp % CB: one column block per
// warp, so a product's B operand is loaded once per k-step); a chunk's [64][D] row results (U_n and O
// forwards, dU backwards) in tiles f = kRowPerWarp warp + i (one row block per warp: its A operand is
// loaded once per k-step). Shared [64][D] bf16 matrices are kMatrix elements, row stride ld.
template <int D>
struct WalkTiles {
  static constexpr int kWarps = D == 128 ? 16 : 8;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int ld = bf16_tiles::ld_of(D);
  static constexpr int CB = D / 16;  // 16-column blocks of the state and the row results
  static constexpr int kStateTiles = (D / 16) * CB;
  static constexpr int kStatePerWarp = (kStateTiles + kWarps - 1) / kWarps;
  static constexpr int kRowTiles = (kChunk / 16) * CB;
  static constexpr int kRowPerWarp = kRowTiles / kWarps;
  static_assert(kWarps % CB == 0 && kRowTiles % kWarps == 0 && CB % kRowPerWarp == 0, "tile assignment");
  static constexpr size_t kMatrix = static_cast<size_t>(kChunk) * ld;
};

// The offset of row t0 of batch b, head h in a [B,T,H,D] tensor.
template <int D>
__device__ __forceinline__ size_t time_major_offset(const Bf16Params& p, int b, int t0, int h) {
  return (static_cast<size_t>(b) * p.T + t0) * static_cast<size_t>(p.H) * D + static_cast<size_t>(h) * D;
}

// dst[t][:] = x[b, t0 + t, h, :] for t < 64; rows past T are zeros. THREADS threads call it.
template <int D, int THREADS = gdn_forward::kThreads>
__device__ __forceinline__ void load_chunk_rows(Bf16* dst, const Bf16* x, const Bf16Params& p, int b, int t0,
                                                int h) {
  bf16_tiles::load_rows<kChunk, D, THREADS>(dst, x + time_major_offset<D>(p, b, t0, h),
                                            static_cast<size_t>(p.H) * D, p.T - t0);
}

// The fused walks' asynchronous fetches for batch and head m (cp.async, one committed group each):
// Q_n, K_n and chunk n's prefix sums of the gates into buffer n % 2 (fetch_walk_qk), W_n and U'_n
// (fetch_walk_wu). copy(which, buffer, src, src_ld, valid_rows) places a [64][D] matrix (which: 0 Q,
// 1 K, 2 W, 3 U') in the walk's own layout, rows at or past valid_rows zeros; gammas [2][64]; the
// block's batch b and head h, m = b H + h.
template <int D, typename Copy>
__device__ __forceinline__ void fetch_walk_qk(const Bf16Params& p, Copy&& copy, double* gammas, int b, int h, int m,
                                              int n) {
  const int t0 = n * kChunk;
  const size_t at = time_major_offset<D>(p, b, t0, h), row_stride = static_cast<size_t>(p.H) * D;
  copy(0, n & 1, p.q + at, row_stride, p.T - t0);
  copy(1, n & 1, p.k + at, row_stride, p.T - t0);
  constexpr int kGammaVectors = kChunk * sizeof(double) / 16;
  const size_t chunk = static_cast<size_t>(m) * p.num_chunks + n;
  if (threadIdx.x < kGammaVectors)
    cp_async16(gammas + (n & 1) * kChunk + 2 * threadIdx.x, p.gamma + chunk * kChunk + 2 * threadIdx.x);
  cp_async_commit();
}
template <int D, typename Copy>
__device__ __forceinline__ void fetch_walk_wu(const Bf16Params& p, Copy&& copy, int m, int n) {
  const size_t rows = (static_cast<size_t>(m) * p.num_chunks + n) * kChunk * D;
  copy(2, 0, p.w + rows, D, kChunk);
  copy(3, 0, p.u + rows, D, kChunk);
  cp_async_commit();
}

// The fused walk (gdn_forward_bf16_walk_kernels.cu): one block per (batch and head, segment slot),
// after prep wrote W, U' and gamma. Its block's shared memory for head dim D (32, 64 or 128).
size_t walk_shared_bytes(int D);
void launch_walk(const Bf16Params& p, int64_t M, int slots, int D);
// The same walk on the warpgroup MMAs (gdn_forward_bf16_walk_wgmma_kernels.cu), D = 128 on an
// sm_90a build running on a Hopper GPU.
size_t walk_wgmma_shared_bytes();
void launch_walk_wgmma(const Bf16Params& p, int64_t M, int slots);

}  // namespace prime::kernels::detail::gdn_forward_bf16
