// The fused walk of GDN's bf16 forward on Hopper's warpgroup MMAs (kernels/common/wgmma.cuh), head
// dim 128: the products of gdn_forward_bf16_walk_kernels.cu's walk, in the same order and with the
// same roundings, issued as wgmma.mma_async with both operands read from shared memory by the tensor
// cores. The mma.sync walk spends 44% of its stalls feeding its MMAs through ldmatrix (kernels/
// README.md, gdn_chunk); here no operand goes through the register file.
//
// One block of four warpgroups per (batch and head, segment slot). Warpgroup g holds the state's
// 64 x 64 block S[64 (g / 2) .., 64 (g % 2) ..] in fp32 accumulators for the whole walk. Per chunk n,
// with Q_n, K_n, W_n, U'_n and the gates' prefix sums G in shared memory (every matrix in the
// 128-byte swizzle of wgmma_layout.h):
//   bf16(S) to shared memory; barrier;
//   groups 0, 1: W_n S on columns 64 g .. and the decayed causal scores P = (Q K^T) * e^{Gi - Gj},
//     j <= i, on columns 32 g .. (m64n32k16); U_n = U'_n - W_n S, stored as bf16 U_n and
//     bf16(diag(e^{G_end - G}) U_n), while the scores' MMAs run; then P as bf16;
//   groups 2, 3: diag(e^G) (Q_n S) on columns 64 (g - 2) .., kept in the registers; barrier;
//   groups 2, 3: O_n = that + P U_n, to o from the registers;
//   every group: S = e^{G_end} S + K_n^T diag(e^{G_end - G}) U_n on its block.
// Where p.states is given (training: what the written-out backward reads), bf16(S) also goes to
// states[n] and bf16 U_n over U'_n in u (U'_n is in shared memory by then), as the split walk keeps them:
// copied out of their swizzled shared arrays in 16-byte rows' pieces once a barrier has passed.
// Q, K and G of chunk n + 1 are fetched (cp.async) once the first barrier has passed, W and U' once
// the second has. Two block barriers per chunk.
#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/bf16_split_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/restart_segments.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/gdn_chunk/gdn_forward_bf16.cuh"
#include "kernels/gdn_chunk/gdn_walk_wgmma_descriptors.h"

namespace prime::kernels::detail::gdn_forward_bf16 {

namespace {

using bf16_tiles::bf16_pair;

// The block's shared memory, byte offsets from its 1024-byte aligned base: Q and K [2][64][128]
// (double-buffered), W, U', U_n and the decayed U_n [64][128], bf16(S) [128][128], the scores
// [64][64], all bf16 and swizzled; G [2][64] float64.
struct WgmmaWalk {
  static constexpr int kD = 128, kThreads = 512;
  static constexpr uint32_t kMatrix = kChunk * kD * 2;  // a [64][128] bf16 matrix: 16 KB
  static constexpr uint32_t kQ = 0, kK = 2 * kMatrix, kW = 4 * kMatrix, kUp = 5 * kMatrix, kUb = 6 * kMatrix,
                            kUd = 7 * kMatrix, kS = 8 * kMatrix, kScores = kS + 2 * kMatrix,
                            kGamma = kScores + kChunk * kChunk * 2, kEnd = kGamma + 2 * kChunk * sizeof(double);
  static constexpr size_t kSharedBytes = kEnd + 1024;  // room to align the base
};

// dst [ROWS][128] (row-major, bf16) = the swizzled [ROWS][128] matrix at src, in 16-byte pieces.
template <int ROWS>
__device__ __forceinline__ void copy_out(Bf16* dst, const unsigned char* src) {
  constexpr int kPieces = ROWS * 128 / 8;
  static_assert(kPieces % WgmmaWalk::kThreads == 0, "whole rounds of pieces");
#pragma unroll 1  // one piece in flight per thread: the walk has no registers to spare
  for (int i = 0; i < kPieces / WgmmaWalk::kThreads; ++i) {
    const int piece = static_cast<int>(threadIdx.x) + WgmmaWalk::kThreads * i, row = piece / 16, col = 8 * (piece % 16);
    *reinterpret_cast<uint4*>(dst + row * 128 + col) =
        *reinterpret_cast<const uint4*>(src + wgmma::sw128_offset(row, col, ROWS));
  }
}

__global__ void __launch_bounds__(WgmmaWalk::kThreads, 1) gdn_forward_walk_bf16_wgmma_kernel(const Bf16Params p) {
  using namespace wgmma;
  using L = WgmmaWalk;
  constexpr int D = L::kD;
  extern __shared__ __align__(128) unsigned char shared_raw[];
  unsigned char* const base = align_1024(shared_raw);
  const uint32_t base_at = static_cast<uint32_t>(__cvta_generic_to_shared(base));
  double* const gammas = reinterpret_cast<double*>(base + L::kGamma);
  // The warpgroup, broadcast so that ptxas knows it is uniform over each warp.
  const int group = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x / 128), 0);
  const int lane = threadIdx.x % 32, t4 = lane % 4;
  const int row0 = accumulator_row(0);  // the thread's accumulator rows: row0 and row0 + 8
  const int state_r0 = 64 * (group / 2), state_c0 = 64 * (group % 2);
  const int m = blockIdx.y, b = m / p.H, h = m % p.H, N = p.num_chunks;
  const size_t state_size = static_cast<size_t>(D) * D;

  // A [64][128] matrix's rows into its swizzled place, rows at or past valid_rows zeros: each thread
  // two 16-byte vectors, rows copy_row and copy_row + 32, the row's 16-byte chunk copy_chunk.
  const int copy_row = threadIdx.x / 16, copy_chunk = threadIdx.x % 16;
  const uint32_t copy_at = sw128_offset(copy_row, 8 * copy_chunk, kChunk);
  const auto copy_matrix = [&](uint32_t at, const Bf16* src, size_t src_ld, int valid_rows) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = copy_row + 32 * i;
      const bool valid = row < valid_rows;
      cp_async16_or_zero(base + at + copy_at + 32 * 128 * i, src + (valid ? row * src_ld + 8 * copy_chunk : 0), valid);
    }
  };
  const auto copy = [&](int which, int buffer, const Bf16* src, size_t src_ld, int valid_rows) {
    copy_matrix(which == 0 ? L::kQ + buffer * L::kMatrix
                : which == 1 ? L::kK + buffer * L::kMatrix
                : which == 2 ? L::kW
                             : L::kUp,
                src, src_ld, valid_rows);
  };
  const auto fetch_qk = [&](int n) { fetch_walk_qk<D>(p, copy, gammas, b, h, m, n); };
  const auto fetch_wu = [&](int n) { fetch_walk_wu<D>(p, copy, m, n); };
  // The thread's pair (e, e + 1) of an accumulator, e = 4 j + 2 i, in a swizzled matrix.
  const int warp = static_cast<int>(threadIdx.x / 32);
  const auto pair_at = [&](int i, int j, int row_offset, int col, int rows) {
    return accumulator_pair_offset(warp, lane, i, j, row_offset, col, rows);
  };

  for_each_restart_segment(p.segment_begins, N, blockIdx.z, gridDim.z, [&](int begin, int end, bool first,
                                                                         bool last) {
    __syncthreads();  // a segment before this one in the block: every group is past its last chunk's MMAs
    fetch_qk(begin);
    fetch_wu(begin);
    float s[32];
#pragma unroll
    for (int e = 0; e < 32; e += 2) {
      float2 value = make_float2(0.0f, 0.0f);
      if (first && p.initial != nullptr)
        value = *reinterpret_cast<const float2*>(p.initial + m * state_size +
                                                 (state_r0 + accumulator_row(e)) * D + state_c0 + accumulator_col(e));
      s[e] = value.x, s[e + 1] = value.y;
    }
    bool start_next = p.starts != nullptr && p.starts[begin];
    for (int n = begin; n < end; ++n) {
      const bool start = start_next;
      if (n + 1 < end) start_next = p.starts != nullptr && p.starts[n + 1];
      if (start) {  // a document's first chunk (uniform over the block)
#pragma unroll
        for (int e = 0; e < 32; ++e) s[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < 32; e += 2)  // bf16(S) for this chunk's products
        *reinterpret_cast<uint32_t*>(base + L::kS + pair_at((e / 2) % 2, e / 4, state_r0, state_c0, D)) =
            bf16_pair(s[e], s[e + 1]);
      cp_async_wait<0>();
      fence_proxy_async();  // bf16(S) and the copies, for the MMAs' reads
      __syncthreads();
      if (n + 1 < end) fetch_qk(n + 1);  // buffer (n + 1) % 2: its last readers, chunk n - 1, are done
      if (p.states != nullptr)  // bf16(S) to states[n] (rewritten in shared memory after the second barrier)
        copy_out<D>(p.states + (static_cast<size_t>(m) * N + n) * state_size, base + L::kS);
      const uint32_t q_at = base_at + L::kQ + (n & 1) * L::kMatrix, k_at = base_at + L::kK + (n & 1) * L::kMatrix;
      const double* gamma = gammas + (n & 1) * kChunk;
      const double gamma_end = gamma[kChunk - 1];
      const WalkDescriptors desc{q_at, k_at, base_at + L::kW, base_at + L::kS, base_at + L::kScores,
                                 base_at + L::kUb, base_at + L::kUd};
      // Each batch fenced and committed inside its branch (the branches are warpgroup-uniform), so
      // ptxas need not close an open batch where they join.
      float acc[32], scores[16];
      if (group < 2) {  // W_n S, columns 64 g .., then the scores' columns 32 g ..: two batches
        fence();
#pragma unroll
        for (int k = 0; k < D / 16; ++k) mma_ss<true>(acc, desc.w_by_depth(k), desc.s_by_depth(k, 64 * group), k > 0);
        commit();
#pragma unroll
        for (int k = 0; k < D / 16; ++k)
          mma_ss_n32<false>(scores, desc.q_by_depth(k), desc.k_rows_by_depth(k, 32 * group), k > 0);
        commit();
      } else {  // Q_n S, columns 64 (g - 2) ..
        fence();
#pragma unroll
        for (int k = 0; k < D / 16; ++k)
          mma_ss<true>(acc, desc.q_by_depth(k), desc.s_by_depth(k, 64 * (group - 2)), k > 0);
        commit();
      }
      if (group < 2)
        wait<1>();  // W_n S; the scores may still run
      else
        wait<0>();
      fence_operands(acc);
      if (group < 2) {  // U_n = U'_n - W_n S, and its rows decayed to the chunk's end
        const float f_lo = expf(static_cast<float>(gamma_end - gamma[row0]));
        const float f_hi = expf(static_cast<float>(gamma_end - gamma[row0 + 8]));
#pragma unroll
        for (int e = 0; e < 32; e += 2) {
          const uint32_t at = pair_at((e / 2) % 2, e / 4, 0, 64 * group, kChunk);
          const float2 target = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(base + L::kUp + at));
          const float u0 = target.x - acc[e], u1 = target.y - acc[e + 1], f = (e & 2) ? f_hi : f_lo;
          *reinterpret_cast<uint32_t*>(base + L::kUb + at) = bf16_pair(u0, u1);
          *reinterpret_cast<uint32_t*>(base + L::kUd + at) = bf16_pair(f * u0, f * u1);
        }
        // The decayed causal scores on columns 32 g ..: a warp whose rows all lie above them (group 1,
        // rows 0 .. 31) writes zeros.
        wait<0>();
        fence_operands(scores);
        const bool above = group == 1 && row0 < 32;
#pragma unroll
        for (int e = 0; e < 16; e += 2) {
          const int i = row0 + 8 * ((e / 2) % 2), j = 32 * group + accumulator_col(e);
          float x0 = 0.0f, x1 = 0.0f;
          if (!above) {
            const double gi = gamma[i];
            x0 = j <= i ? expf(static_cast<float>(gi - gamma[j])) * scores[e] : 0.0f;
            x1 = j + 1 <= i ? expf(static_cast<float>(gi - gamma[j + 1])) * scores[e + 1] : 0.0f;
          }
          *reinterpret_cast<uint32_t*>(base + L::kScores + pair_at((e / 2) % 2, 4 * group + e / 4, 0, 0, kChunk)) =
              bf16_pair(x0, x1);
        }
      } else {  // diag(e^G) (Q_n S)
        const float e_lo = expf(static_cast<float>(gamma[row0]));
        const float e_hi = expf(static_cast<float>(gamma[row0 + 8]));
#pragma unroll
        for (int e = 0; e < 32; ++e) acc[e] *= (e & 2) ? e_hi : e_lo;
      }
      fence_proxy_async();  // U_n, its decayed rows and the scores, for the MMAs' reads
      __syncthreads();
      if (n + 1 < end) fetch_wu(n + 1);  // W_n and U'_n are read
      if (p.states != nullptr)  // U_n over U'_n (chunk n's U' came in before the first barrier)
        copy_out<kChunk>(p.u + (static_cast<size_t>(m) * N + n) * kChunk * D, base + L::kUb);
      const float d = expf(static_cast<float>(gamma_end));
#pragma unroll
      for (int e = 0; e < 32; ++e) s[e] *= d;
      // S += K_n^T diag(e^{G_end - G}) U_n on this group's block: A = K_n^T, K_n's rows the depth.
      const auto update_state = [&] {
#pragma unroll
        for (int k = 0; k < kChunk / 16; ++k)
          mma_ss<true, true>(s, desc.kt_by_row(k, state_r0), desc.ud_by_row(k, state_c0), true);
      };
      if (group >= 2) {  // + P U_n (P is zero above the diagonal), then the state
        fence();
#pragma unroll
        for (int k = 0; k < kChunk / 16; ++k)
          mma_ss<true>(acc, desc.scores_by_depth(k), desc.ub_by_row(k, 64 * (group - 2)), true);
        update_state();
        commit();
      } else {
        fence();
        update_state();
        commit();
      }
      wait<0>();
      fence_operands(acc);
      fence_operands(s);
      if (group >= 2) {  // O_n from the registers
        const int t0 = n * kChunk, col0 = 64 * (group - 2) + 2 * t4;
#pragma unroll
        for (int e = 0; e < 32; e += 2) {
          const int time = t0 + row0 + 8 * ((e / 2) % 2);
          if (time < p.T)
            *reinterpret_cast<__nv_bfloat162*>(p.o + time_major_offset<D>(p, b, time, h) + col0 + 8 * (e / 4)) =
                __floats2bfloat162_rn(acc[e], acc[e + 1]);
        }
      }
    }
    if (last) {
#pragma unroll
      for (int e = 0; e < 32; e += 2)
        *reinterpret_cast<float2*>(p.final_state + m * state_size + (state_r0 + accumulator_row(e)) * D + state_c0 +
                                   accumulator_col(e)) = make_float2(s[e], s[e + 1]);
    }
  });
}

}  // namespace

size_t walk_wgmma_shared_bytes() { return WgmmaWalk::kSharedBytes; }

void launch_walk_wgmma(const Bf16Params& p, int64_t M, int slots) {
  const dim3 grid(1, static_cast<unsigned>(M), static_cast<unsigned>(slots));
  launch_with_shared(gdn_forward_walk_bf16_wgmma_kernel, grid, WgmmaWalk::kSharedBytes, WgmmaWalk::kThreads, p,
                     "gdn_forward_walk_bf16_wgmma_kernel");
}

}  // namespace prime::kernels::detail::gdn_forward_bf16
