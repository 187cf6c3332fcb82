// What GDN's bf16 fused forward's kernel sources share (gdn_forward_bf16_kernels.cu: prep, and the
// split walk's scan and output; gdn_forward_bf16_walk_kernels.cu: the fused walk): the launch
// parameters, the row loads of a chunk and the fused walk's launcher.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/bf16_tiles.cuh"
#include "kernels/gdn_chunk/gdn_forward_common.cuh"

namespace prime::kernels::detail::gdn_forward_bf16 {

using bf16_tiles::Bf16;
constexpr int kChunk = gdn_forward::kChunk;
constexpr int kLdT = kChunk + 8;  // row stride of a [64][64] bf16 shared matrix (T, the scores)

struct Bf16Params {
  const Bf16 *q, *k, *v;          // [B,T,H,D]
  const float *g, *beta;          // [B,T,H]
  int T, H, num_chunks;
  Bf16 *w, *u;                    // [M,N,64,D]; u holds U', then (split walk) U_n
  Bf16* k_decayed;                // [M,N,64,D], split walk only (else null)
  float* decay;                   // [M,N], split walk only
  Bf16* states;                   // [M,N,D,D], split walk only
  double* gamma;                  // [M,N,64], fused walk only: each chunk's prefix sums of the gates
  const float* initial;           // [M,D,D] or null (zeros)
  float* final_state;             // [M,D,D]
  const bool* starts;             // [N] or null
  const int* segment_begins;      // restart_segments' list for starts, or null (one segment)
  Bf16* o;                        // [B,T,H,D]
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

// The fused walk (gdn_forward_bf16_walk_kernels.cu): one block per (batch and head, segment slot),
// after prep wrote W, U' and gamma. Its block's shared memory for head dim D (32, 64 or 128).
size_t walk_shared_bytes(int D);
void launch_walk(const Bf16Params& p, int64_t M, int slots, int D);

}  // namespace prime::kernels::detail::gdn_forward_bf16
