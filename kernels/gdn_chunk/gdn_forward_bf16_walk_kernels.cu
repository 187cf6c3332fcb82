// The fused walk of GDN's bf16 forward (gdn_forward_bf16.cuh): the split walk's scan and output
// (gdn_forward_bf16_kernels.cu) in one kernel, so neither the state entering each chunk nor U_n
// goes to memory and back. One block per (batch and head, segment slot), 16 warps at D = 128
// and 8 below; the state S [D][D] lives in the warps' fp32 accumulator fragments across all
// chunks. Per chunk n, with W_n, U'_n (prep) and Q_n, K_n, G_n in shared memory:
//   bf16(S) to shared memory;
//   U_n = U'_n - W_n S, kept as bf16 U_n and bf16(diag(e^{G_end - G}) U_n);
//   the decayed causal scores P = (Q K^T) * e^{Gi - Gj}, j <= i (bf16; they do not need S);
//   O_n = diag(e^G) (Q_n S) + P U_n, to o from the registers;
//   S = e^{G_end} S + K_n^T diag(e^{G_end - G}) U_n.
// Q, K and G of chunk n + 1 stream in (cp.async, double-buffered) during all of chunk n, W and U'
// of chunk n + 1 once chunk n's U_n is formed. Three block barriers per chunk.
#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/bf16_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/restart_segments.cuh"
#include "kernels/gdn_chunk/gdn_forward_bf16.cuh"

namespace prime::kernels::detail::gdn_forward_bf16 {

namespace {

using namespace bf16_tiles;

// The block's shape (WalkTiles) and shared memory for head dim D.
template <int D>
struct Walk : WalkTiles<D> {
  static constexpr int ld = WalkTiles<D>::ld;
  static constexpr size_t kMatrix = WalkTiles<D>::kMatrix;
  // G [2][64] (float64); W, U', Q [2], K [2], U_n, the decayed U_n [64][ld]; bf16(S) [D][ld];
  // the scores [64][kLdT]; the warps' scratch tiles.
  static constexpr size_t kSharedBytes = 2 * kChunk * sizeof(double) + (8 * kMatrix + D * ld) * sizeof(Bf16) +
                                         kChunk * kLdT * sizeof(Bf16) + WalkTiles<D>::kWarps * kScratchBytes;
};

template <int D>
__global__ void __launch_bounds__(Walk<D>::kThreads, D == 128 ? 1 : 2)
    gdn_forward_walk_bf16_kernel(const Bf16Params p) {
  using Shape = Walk<D>;
  constexpr int ld = Shape::ld, CB = Shape::CB, kWarps = Shape::kWarps, kThreads = Shape::kThreads;
  constexpr size_t kMatrix = Shape::kMatrix;
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  double* gammas = reinterpret_cast<double*>(shared_bytes);  // [2][64]
  Bf16* ws = reinterpret_cast<Bf16*>(gammas + 2 * kChunk);   // W_n
  Bf16* ups = ws + kMatrix;                                  // U'_n
  Bf16* qs = ups + kMatrix;                                  // [2]: Q_n
  Bf16* ks = qs + 2 * kMatrix;                               // [2]: K_n
  Bf16* ub = ks + 2 * kMatrix;                               // U_n
  Bf16* ud = ub + kMatrix;                                   // diag(e^{G_end - G}) U_n
  Bf16* sb = ud + kMatrix;                                   // [D][ld]: bf16(S)
  Bf16* sc = sb + D * ld;                                    // [64][kLdT]: the decayed scores
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scratch = reinterpret_cast<float*>(sc + kChunk * kLdT) + warp * (kScratchBytes / sizeof(float));
  const int m = blockIdx.y, b = m / p.H, h = m % p.H, N = p.num_chunks;
  const size_t state_size = static_cast<size_t>(D) * D;
  const auto copy = [&](int which, int buffer, const Bf16* src, size_t src_ld, int valid_rows) {
    Bf16* dst = which == 0 ? qs + buffer * kMatrix : which == 1 ? ks + buffer * kMatrix : which == 2 ? ws : ups;
    copy_async<kChunk, D, kThreads>(dst, src, src_ld, valid_rows);
  };
  const auto fetch_qk = [&](int n) { fetch_walk_qk<D>(p, copy, gammas, b, h, m, n); };
  const auto fetch_wu = [&](int n) { fetch_walk_wu<D>(p, copy, m, n); };
  const int state_c0 = 16 * (warp % CB);
  const int row_r = (Shape::kRowPerWarp * warp) / CB, row_c0 = 16 * ((Shape::kRowPerWarp * warp) % CB);
  const int g_lane = lane / 4;  // an accumulator's rows are g_lane and g_lane + 8

  for_each_restart_segment(p.segment_begins, N, blockIdx.z, gridDim.z, [&](int begin, int end, bool first,
                                                                         bool last) {
    fetch_qk(begin);
    fetch_wu(begin);
    Acc s[Shape::kStatePerWarp];
#pragma unroll
    for (int i = 0; i < Shape::kStatePerWarp; ++i) {
      const int f = warp + kWarps * i;
      if (first && f < Shape::kStateTiles && p.initial != nullptr)
        load_acc(s[i], p.initial + m * state_size + 16 * (f / CB) * D + state_c0, D);
      else
        fill(s[i], 0.0f);
    }
    bool start_next = p.starts != nullptr && p.starts[begin];
    for (int n = begin; n < end; ++n) {
      const bool start = start_next;
      if (n + 1 < end) {
        start_next = p.starts != nullptr && p.starts[n + 1];
        fetch_qk(n + 1);  // its buffer was last read before the previous chunk's last barrier
      } else {
        cp_async_commit();  // an empty group: the wait below counts the same
      }
      if (start) {  // a document's first chunk (uniform over the block)
#pragma unroll
        for (int i = 0; i < Shape::kStatePerWarp; ++i) fill(s[i], 0.0f);
      }
#pragma unroll
      for (int i = 0; i < Shape::kStatePerWarp; ++i) {  // bf16(S) for this chunk's products
        const int f = warp + kWarps * i;
        if (f >= Shape::kStateTiles) continue;
        const int r0 = 16 * (f / CB);
        for_each_pair(s[i], [&](int row, int col, float x0, float x1) {
          *reinterpret_cast<__nv_bfloat162*>(sb + (r0 + row) * ld + state_c0 + col) = __floats2bfloat162_rn(x0, x1);
        });
      }
      cp_async_wait<1>();  // everything but chunk n + 1's Q, K and G
      __syncthreads();
      const Bf16* q_n = qs + (n & 1) * kMatrix;
      const Bf16* k_n = ks + (n & 1) * kMatrix;
      const double* gamma = gammas + (n & 1) * kChunk;
      const double gamma_end = gamma[kChunk - 1];
      {  // U_n = U'_n - W_n S, and its rows decayed to the chunk's end
        Acc acc[Shape::kRowPerWarp];
#pragma unroll
        for (int i = 0; i < Shape::kRowPerWarp; ++i) fill(acc[i], 0.0f);
        row_block_product<Shape::kRowPerWarp>(acc, ws + 16 * row_r * ld, ld, D, sb, ld, row_c0);
        const int t_lo = 16 * row_r + g_lane;
        const float f_lo = expf(static_cast<float>(gamma_end - gamma[t_lo]));
        const float f_hi = expf(static_cast<float>(gamma_end - gamma[t_lo + 8]));
#pragma unroll
        for (int i = 0; i < Shape::kRowPerWarp; ++i)
          for_each_pair(acc[i], [&](int row, int col, float x0, float x1) {
            const int at = (16 * row_r + row) * ld + row_c0 + 16 * i + col;
            const float2 target = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(ups + at));
            const float u0 = target.x - x0, u1 = target.y - x1, f = row < 8 ? f_lo : f_hi;
            *reinterpret_cast<__nv_bfloat162*>(ub + at) = __floats2bfloat162_rn(u0, u1);
            *reinterpret_cast<__nv_bfloat162*>(ud + at) = __floats2bfloat162_rn(f * u0, f * u1);
          });
      }
      decayed_causal_scores<D, kWarps>(sc, kLdT, q_n, k_n, gamma, [](int) { return 1.0f; });
      __syncthreads();  // U_n and the scores formed; W_n and U'_n read
      if (n + 1 < end)
        fetch_wu(n + 1);
      else
        cp_async_commit();
      {  // O_n = diag(e^G) (Q_n S) + P U_n, the scores' row block r having columns < 16 (r + 1) only
        Acc acc[Shape::kRowPerWarp];
#pragma unroll
        for (int i = 0; i < Shape::kRowPerWarp; ++i) fill(acc[i], 0.0f);
        row_block_product<Shape::kRowPerWarp>(acc, q_n + 16 * row_r * ld, ld, D, sb, ld, row_c0);
        const float e_lo = expf(static_cast<float>(gamma[16 * row_r + g_lane]));
        const float e_hi = expf(static_cast<float>(gamma[16 * row_r + g_lane + 8]));
#pragma unroll
        for (int i = 0; i < Shape::kRowPerWarp; ++i)
#pragma unroll
          for (int e = 0; e < Acc::num_elements; ++e)  // x[4h + 2i + e] is in row g + 8i
            acc[i].x[e] *= (e & 2) ? e_hi : e_lo;
        row_block_product<Shape::kRowPerWarp>(acc, sc + 16 * row_r * kLdT, kLdT, 16 * (row_r + 1), ub, ld, row_c0);
        const int t0 = n * kChunk;
#pragma unroll
        for (int i = 0; i < Shape::kRowPerWarp; ++i)
          emit_tile(acc[i], scratch, [&](int row, int col, const float* x) {
            const int time = t0 + 16 * row_r + row;
            if (time < p.T)
              *reinterpret_cast<uint4*>(p.o + time_major_offset<D>(p, b, time, h) + row_c0 + 16 * i + col) = pack8(x);
          });
      }
      {  // S = e^{G_end} S + K_n^T diag(e^{G_end - G}) U_n: A's row k is K_n's column k
        const float d = expf(static_cast<float>(gamma_end));
#pragma unroll
        for (int i = 0; i < Shape::kStatePerWarp; ++i)
#pragma unroll
          for (int e = 0; e < Acc::num_elements; ++e) s[i].x[e] *= d;
#pragma unroll
        for (int k0 = 0; k0 < kChunk; k0 += 16) {
          FragB bm;
          load_b(bm, ud + k0 * ld + state_c0, ld);
#pragma unroll
          for (int i = 0; i < Shape::kStatePerWarp; ++i) {
            const int f = warp + kWarps * i;
            if (f >= Shape::kStateTiles) continue;
            FragA a;
            load_a_t(a, k_n + k0 * ld + 16 * (f / CB), ld);
            mma(s[i], a, bm);
          }
        }
      }
      __syncthreads();  // Q_n, K_n, bf16(S), U_n and the scores read
    }
    if (last) {
#pragma unroll
      for (int i = 0; i < Shape::kStatePerWarp; ++i) {
        const int f = warp + kWarps * i;
        if (f < Shape::kStateTiles)
          store_acc(p.final_state + m * state_size + 16 * (f / CB) * D + state_c0, s[i], D);
      }
    }
  });
}

template <int D>
void launch_walk_of(const Bf16Params& p, int64_t M, int slots) {
  const dim3 grid(1, static_cast<unsigned>(M), static_cast<unsigned>(slots));
  launch_with_shared(gdn_forward_walk_bf16_kernel<D>, grid, Walk<D>::kSharedBytes, Walk<D>::kThreads, p,
                     "gdn_forward_walk_bf16_kernel");
}

}  // namespace

size_t walk_shared_bytes(int D) {
  return D == 32 ? Walk<32>::kSharedBytes : D == 64 ? Walk<64>::kSharedBytes : Walk<128>::kSharedBytes;
}

void launch_walk(const Bf16Params& p, int64_t M, int slots, int D) {
  if (D == 32)
    launch_walk_of<32>(p, M, slots);
  else if (D == 64)
    launch_walk_of<64>(p, M, slots);
  else
    launch_walk_of<128>(p, M, slots);
}

}  // namespace prime::kernels::detail::gdn_forward_bf16
