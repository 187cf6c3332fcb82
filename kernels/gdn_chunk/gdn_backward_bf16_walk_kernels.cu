// The fused reverse walk of GDN's backward on the bf16 forward's results (gdn_chunk_backward.h has the
// math; launch_gdn_backward_walk_bf16 in gdn_chunk_launch.h): the walk's addend, the walk itself and
// dU in one kernel, the mirror of the forward's fused walk (gdn_forward_bf16_walk_kernels.cu). One block
// per (batch and head, segment slot), WalkTiles' warps; G, the gradient reaching the state after the
// chunk, lives in the warps' fp32 accumulators across all chunks, walked from the last chunk to the
// first. Per chunk n, with Q_n, K_n, dO_n, W_n (bf16) and Gamma in shared memory:
//   the chunk decay's gradient sum(S_n o G) on fp32 G (S_n the state entering the chunk, bf16, at the
//   accumulators' elements, loaded during chunk n + 1), and G_n = bf16(G) to shared memory and from there
//   to memory (only bf16 products read it);
//   the decayed causal scores P = (Q K^T) * e^{Gi - Gj}, j <= i (bf16), and bf16(diag(e^Gamma) dO);
//   dU_n = P^T dO_n + diag(e^{Gamma_C - Gamma}) (K_n G), to memory and, negated, to shared memory (bf16:
//   the backward reads it only as bf16 products' operand);
//   G = e^{Gamma_C} G + Q_n^T diag(e^Gamma) dO_n + W_n^T (-dU_n)
// (the same as (e^Gamma Q - P W)^T dO + e^{Gamma_C} G - W^T (K_d G), the split form's walk on its
// addend). Every product is one bf16 MMA with fp32 accumulation, as in the forward's walk
// (experiments/gdn_bf16_backward: within the bound on the study's hard cases). A flagged chunk
// (a document's first) lets nothing flow back past it; the segment holding chunk 0 writes d_initial.
// Q, K, dO and Gamma of chunk n - 1 stream in (cp.async, double-buffered) during chunk n, W_n from
// the chunk's first barrier until the third. Three block barriers per chunk.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/bf16_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/prefetch.cuh"
#include "kernels/common/restart_segments.cuh"
#include "kernels/gdn_chunk/gdn_chunk_launch.h"
#include "kernels/gdn_chunk/gdn_forward_bf16.cuh"

namespace prime::kernels::detail {

namespace {

using namespace bf16_tiles;
using gdn_forward_bf16::kChunk;
using gdn_forward_bf16::kLdT;
using gdn_forward_bf16::WalkTiles;

struct BackwardWalkParams {
  const Bf16 *q, *k, *d_out;  // [B,T,H,D]
  const Bf16* w;              // [M,N,64,D]
  const double* gamma;        // [M,N,64]
  const float* d_final;       // [M,D,D] or null (zeros)
  const Bf16* states;         // [M,N,D,D]: the state entering each chunk
  const bool* starts;         // [N] or null
  const int* segment_begins;  // restart_segments' list for starts, or null (one segment)
  int T, H, num_chunks;
  Bf16* grads_after;     // [M,N,D,D]
  float* d_chunk_decay;  // [M,N]
  Bf16* d_u;             // [M,N,64,D]
  float* d_initial;      // [M,D,D]
};

// The block's shared memory: Gamma [2][64] (float64); the warps' sums of S_n o G; Q, K, dO [2] and W,
// diag(e^Gamma) dO, -dU [64][ld]; bf16(G) [D][ld]; the scores [64][kLdT].
template <int D>
struct BackwardWalk : WalkTiles<D> {
  static constexpr int kDotBytes = 128;  // kWarps floats, rounded up to keep the bf16 arrays 16-byte aligned
  static_assert(WalkTiles<D>::kWarps * sizeof(float) <= kDotBytes, "the warps' sums fit");
  static constexpr size_t kSharedBytes = 2 * kChunk * sizeof(double) + kDotBytes +
                                         (9 * WalkTiles<D>::kMatrix + D * WalkTiles<D>::ld) * sizeof(Bf16) +
                                         kChunk * kLdT * sizeof(Bf16);
};

template <int D>
__global__ void __launch_bounds__(WalkTiles<D>::kThreads, D == 128 ? 1 : 2)
    gdn_backward_walk_bf16_kernel(const BackwardWalkParams p) {
  using Shape = WalkTiles<D>;
  constexpr int ld = Shape::ld, CB = Shape::CB, kWarps = Shape::kWarps, kThreads = Shape::kThreads;
  constexpr size_t kMatrix = Shape::kMatrix;
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  double* gammas = reinterpret_cast<double*>(shared_bytes);  // [2][64]
  float* dots = reinterpret_cast<float*>(gammas + 2 * kChunk);  // [kWarps]: each warp's sum of S_n o G
  Bf16* qs = reinterpret_cast<Bf16*>(reinterpret_cast<unsigned char*>(dots) + BackwardWalk<D>::kDotBytes);  // [2]
  Bf16* ks = qs + 2 * kMatrix;                               // [2]: K_n
  Bf16* dos = ks + 2 * kMatrix;                              // [2]: dO_n
  Bf16* ws = dos + 2 * kMatrix;                              // W_n
  Bf16* doe = ws + kMatrix;                                  // diag(e^Gamma) dO_n
  Bf16* ndu = doe + kMatrix;                                 // -dU_n
  Bf16* gb = ndu + kMatrix;                                  // [D][ld]: bf16(G)
  Bf16* sc = gb + D * ld;                                    // [64][kLdT]: the decayed scores
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m = blockIdx.y, b = m / p.H, h = m % p.H, N = p.num_chunks;
  const size_t state_size = static_cast<size_t>(D) * D, row_stride = static_cast<size_t>(p.H) * D;
  const auto rows_of = [&](const Bf16* x, int t0) {  // row t0 of batch b, head h in a [B,T,H,D] tensor
    return x + (static_cast<size_t>(b) * p.T + t0) * row_stride + static_cast<size_t>(h) * D;
  };
  const auto fetch_qkd = [&](int n) {  // Q, K, dO and Gamma of chunk n into buffer n % 2: one group
    const int t0 = n * kChunk, buffer = n & 1;
    copy_async<kChunk, D, kThreads>(qs + buffer * kMatrix, rows_of(p.q, t0), row_stride, p.T - t0);
    copy_async<kChunk, D, kThreads>(ks + buffer * kMatrix, rows_of(p.k, t0), row_stride, p.T - t0);
    copy_async<kChunk, D, kThreads>(dos + buffer * kMatrix, rows_of(p.d_out, t0), row_stride, p.T - t0);
    constexpr int kGammaVectors = kChunk * sizeof(double) / 16;
    if (threadIdx.x < kGammaVectors)
      cp_async16(gammas + buffer * kChunk + 2 * threadIdx.x,
                 p.gamma + (static_cast<size_t>(m) * N + n) * kChunk + 2 * threadIdx.x);
    cp_async_commit();
  };
  const auto fetch_w = [&](int n) {  // W_n: one group
    copy_async<kChunk, D, kThreads>(ws, p.w + (static_cast<size_t>(m) * N + n) * kChunk * D, D, kChunk);
    cp_async_commit();
  };
  const int state_c0 = 16 * (warp % CB);
  const int row_r = (Shape::kRowPerWarp * warp) / CB, row_c0 = 16 * ((Shape::kRowPerWarp * warp) % CB);
  const int g_lane = lane / 4;  // an accumulator's rows are g_lane and g_lane + 8
  // S_n (bf16) at this thread's elements of G, as bf16 pairs: loaded before chunk n + 1's state update, so
  // that they arrive while its products run, and summed with G_n at chunk n's top.
  uint32_t state_pairs[Shape::kStatePerWarp][4];
  const auto load_state_pairs = [&](int n) {
    const Bf16* state = p.states + (static_cast<size_t>(m) * N + n) * state_size;
#pragma unroll
    for (int i = 0; i < Shape::kStatePerWarp; ++i) {
      const int f = warp + kWarps * i;
      if (f >= Shape::kStateTiles) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e)  // for_each_pair's order: rows g, g + 8, then columns + 8
        state_pairs[i][e] = *reinterpret_cast<const uint32_t*>(
            state + (16 * (f / CB) + g_lane + 8 * (e % 2)) * D + state_c0 + 2 * (lane % 4) + 8 * (e / 2));
    }
  };

  for_each_restart_segment(p.segment_begins, N, blockIdx.z, gridDim.z, [&](int begin, int end, bool first,
                                                                         bool last) {
    fetch_qkd(end - 1);
    load_state_pairs(end - 1);
    Acc s[Shape::kStatePerWarp];  // G
#pragma unroll
    for (int i = 0; i < Shape::kStatePerWarp; ++i) {
      const int f = warp + kWarps * i;
      if (last && f < Shape::kStateTiles && p.d_final != nullptr)
        load_acc(s[i], p.d_final + m * state_size + 16 * (f / CB) * D + state_c0, D);
      else
        fill(s[i], 0.0f);
    }
    for (int n = end - 1; n >= begin; --n) {
      const size_t chunk = static_cast<size_t>(m) * N + n;
      const bool restart = p.starts != nullptr && p.starts[n];  // read early: used after the chunk's products
      {  // the chunk decay's gradient: S_n (loaded before) at this thread's elements of G
        if (n > begin && threadIdx.x < state_size * sizeof(Bf16) / 128)  // S_{n-1} into L2 for the next chunk
          prefetch_l2(p.states + (chunk - 1) * state_size + threadIdx.x * (128 / sizeof(Bf16)));
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < Shape::kStatePerWarp; ++i) {
          const int f = warp + kWarps * i;
          if (f >= Shape::kStateTiles) continue;
          int e = 0;
          for_each_pair(s[i], [&](int, int, float x0, float x1) {
            const uint32_t bits = state_pairs[i][e++];
            dot = fmaf(__uint_as_float(bits << 16), x0, dot);
            dot = fmaf(__uint_as_float(bits & 0xFFFF0000u), x1, dot);
          });
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_down_sync(0xffffffffu, dot, offset);
        if (lane == 0) dots[warp] = dot;  // read after (1); the next write comes after (3)
      }
#pragma unroll
      for (int i = 0; i < Shape::kStatePerWarp; ++i) {  // bf16(G): this chunk's products' operand and G_n
        const int f = warp + kWarps * i;
        if (f >= Shape::kStateTiles) continue;
        const int r0 = 16 * (f / CB);
        for_each_pair(s[i], [&](int row, int col, float x0, float x1) {
          *reinterpret_cast<__nv_bfloat162*>(gb + (r0 + row) * ld + state_c0 + col) = __floats2bfloat162_rn(x0, x1);
        });
      }
      cp_async_wait<0>();  // chunk n's Q, K, dO and Gamma (W_{n+1} was waited for in chunk n + 1)
      __syncthreads();     // (1) bf16(G) and chunk n's rows in place; chunk n + 1's reads all done
      fetch_w(n);          // first: the wait before (3) leaves only the group after it pending
      for_each_vector<D, D, kThreads>([&](int row, int col) {  // G_n to memory (gb is rewritten after (3))
        *reinterpret_cast<uint4*>(p.grads_after + chunk * state_size + row * D + col) =
            *reinterpret_cast<const uint4*>(gb + row * ld + col);
      });
      if (threadIdx.x == 0) {  // the warps' sums in a fixed order
        float total = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) total += dots[w];
        p.d_chunk_decay[chunk] = total;
      }
      if (n > begin)
        fetch_qkd(n - 1);
      else
        cp_async_commit();  // an empty group: the wait below counts the same
      const Bf16* q_n = qs + (n & 1) * kMatrix;
      const Bf16* k_n = ks + (n & 1) * kMatrix;
      const Bf16* do_n = dos + (n & 1) * kMatrix;
      const double* gamma = gammas + (n & 1) * kChunk;
      const double gamma_end = gamma[kChunk - 1];
      for_each_vector<kChunk, D, kThreads>([&](int t, int i) {  // diag(e^Gamma) dO_n
        float values[8];
        unpack8(*reinterpret_cast<const uint4*>(do_n + t * ld + i), values);
        const float f = expf(static_cast<float>(gamma[t]));
#pragma unroll
        for (int e = 0; e < 8; ++e) values[e] *= f;
        *reinterpret_cast<uint4*>(doe + t * ld + i) = pack8(values);
      });
      decayed_causal_scores<D, kWarps>(sc, kLdT, q_n, k_n, gamma, [](int) { return 1.0f; });
      Acc du[Shape::kRowPerWarp];  // dU_n's tiles, first diag(e^{Gamma_C - Gamma}) (K_n G)
#pragma unroll
      for (int i = 0; i < Shape::kRowPerWarp; ++i) fill(du[i], 0.0f);
      row_block_product<Shape::kRowPerWarp>(du, k_n + 16 * row_r * ld, ld, D, gb, ld, row_c0);
      {
        const int t_lo = 16 * row_r + g_lane;
        const float f_lo = expf(static_cast<float>(gamma_end - gamma[t_lo]));
        const float f_hi = expf(static_cast<float>(gamma_end - gamma[t_lo + 8]));
#pragma unroll
        for (int i = 0; i < Shape::kRowPerWarp; ++i)
#pragma unroll
          for (int e = 0; e < Acc::num_elements; ++e)  // x[4h + 2i + e] is in row g + 8i
            du[i].x[e] *= (e & 2) ? f_hi : f_lo;
      }
      __syncthreads();  // (2) the scores and diag(e^Gamma) dO_n formed; bf16(G) read
      // + P^T dO_n: A = P^T, read transposed; P^T's row block r has depth 16 r.. only (P is lower).
      for (int k0 = 16 * row_r; k0 < kChunk; k0 += 16) {
        FragA a;
        load_a_t(a, sc + k0 * kLdT + 16 * row_r, kLdT);
#pragma unroll
        for (int i = 0; i < Shape::kRowPerWarp; ++i) {
          FragB bm;
          load_b(bm, do_n + k0 * ld + row_c0 + 16 * i, ld);
          mma(du[i], a, bm);
        }
      }
#pragma unroll
      for (int i = 0; i < Shape::kRowPerWarp; ++i) {
        Bf16* out = p.d_u + (chunk * kChunk + 16 * row_r) * D + row_c0 + 16 * i;
        for_each_pair(du[i], [&](int row, int col, float x0, float x1) {
          *reinterpret_cast<__nv_bfloat162*>(out + row * D + col) = __floats2bfloat162_rn(x0, x1);
          *reinterpret_cast<__nv_bfloat162*>(ndu + (16 * row_r + row) * ld + row_c0 + 16 * i + col) =
              __floats2bfloat162_rn(-x0, -x1);
        });
      }
      cp_async_wait<1>();  // W_n (chunk n - 1's rows may still be in flight)
      __syncthreads();     // (3) -dU_n and W_n in place
      if (n > begin) load_state_pairs(n - 1);
      {                    // G = e^{Gamma_C} G + Q_n^T diag(e^Gamma) dO_n + W_n^T (-dU_n): A's row k is Q_n's (W_n's) column k
        const float d = expf(static_cast<float>(gamma_end));
#pragma unroll
        for (int i = 0; i < Shape::kStatePerWarp; ++i)
#pragma unroll
          for (int e = 0; e < Acc::num_elements; ++e) s[i].x[e] *= d;
#pragma unroll
        for (int k0 = 0; k0 < kChunk; k0 += 16) {
          FragB b_do, b_du;
          load_b(b_do, doe + k0 * ld + state_c0, ld);
          load_b(b_du, ndu + k0 * ld + state_c0, ld);
#pragma unroll
          for (int i = 0; i < Shape::kStatePerWarp; ++i) {
            const int f = warp + kWarps * i;
            if (f >= Shape::kStateTiles) continue;
            FragA a;
            load_a_t(a, q_n + k0 * ld + 16 * (f / CB), ld);
            mma(s[i], a, b_do);
            load_a_t(a, ws + k0 * ld + 16 * (f / CB), ld);
            mma(s[i], a, b_du);
          }
        }
      }
      if (restart) {  // the forward's reset: nothing flows to the chunks before
#pragma unroll
        for (int i = 0; i < Shape::kStatePerWarp; ++i) fill(s[i], 0.0f);
      }
    }
    cp_async_wait<0>();  // nothing in flight into the buffers the next segment fills
    __syncthreads();
    if (first) {
#pragma unroll
      for (int i = 0; i < Shape::kStatePerWarp; ++i) {
        const int f = warp + kWarps * i;
        if (f < Shape::kStateTiles) store_acc(p.d_initial + m * state_size + 16 * (f / CB) * D + state_c0, s[i], D);
      }
    }
  });
}

template <int D>
void launch_backward_walk_of(const BackwardWalkParams& p, int64_t M, int slots) {
  const dim3 grid(1, static_cast<unsigned>(M), static_cast<unsigned>(slots));
  launch_with_shared(gdn_backward_walk_bf16_kernel<D>, grid, BackwardWalk<D>::kSharedBytes,
                     BackwardWalk<D>::kThreads, p, "gdn_backward_walk_bf16_kernel");
}

size_t backward_walk_shared_bytes(int64_t D) {
  return D == 32   ? BackwardWalk<32>::kSharedBytes
         : D == 64 ? BackwardWalk<64>::kSharedBytes
                   : BackwardWalk<128>::kSharedBytes;
}

}  // namespace

bool gdn_backward_walk_bf16_fits_device(int64_t head_dim, int device) {
  return (head_dim == 32 || head_dim == 64 || head_dim == 128) &&
         backward_walk_shared_bytes(head_dim) <= at::cuda::getDeviceProperties(device)->sharedMemPerBlockOptin;
}

void launch_gdn_backward_walk_bf16(const GdnBackwardWalkBf16& walk) {
  const char* op = "gdn_backward_walk_bf16";
  check_operand(walk.q, op, "q", at::kBFloat16, 4);
  const int64_t B = walk.q.size(0), T = walk.q.size(1), H = walk.q.size(2), D = walk.q.size(3), M = B * H;
  const int64_t N = (T + kChunk - 1) / kChunk;
  PRIME_CHECK(D == 32 || D == 64 || D == 128, op, ": head dim ", D, " is not 32, 64 or 128");
  PRIME_CHECK(M <= 65535, op, ": batch * heads must be <= 65535");
  PRIME_CHECK(gdn_backward_walk_bf16_fits_device(D, walk.q.get_device()), op, ": the walk's block for head dim ", D,
              " does not fit this device's shared memory");
  for (const auto& [tensor, name] : {std::pair{&walk.k, "k"}, std::pair{&walk.d_out, "d_out"}})
    check_operand_sizes(*tensor, op, name, at::kBFloat16, walk.q.sizes());
  check_operand_sizes(walk.w, op, "w", at::kBFloat16, {M, N, kChunk, D});
  check_operand_sizes(walk.gamma, op, "gamma", at::kDouble, {M, N, kChunk});
  check_operand_sizes(walk.states, op, "states", at::kBFloat16, {M, N, D, D});
  check_operand_sizes(walk.grads_after, op, "grads_after", at::kBFloat16, {M, N, D, D});
  check_operand_sizes(walk.d_chunk_decay, op, "d_chunk_decay", at::kFloat, {M, N});
  check_operand_sizes(walk.d_u, op, "d_u", at::kBFloat16, {M, N, kChunk, D});
  check_operand_sizes(walk.d_initial, op, "d_initial", at::kFloat, {M, D, D});
  if (walk.d_final.defined()) check_operand_sizes(walk.d_final, op, "d_final", at::kFloat, {M, D, D});
  if (walk.starts.defined()) check_operand_sizes(walk.starts, op, "starts", at::kBool, {N});
  for (const auto& [tensor, name] : {std::pair{&walk.q, "q"}, std::pair{&walk.k, "k"}, std::pair{&walk.d_out, "d_out"},
                                     std::pair{&walk.w, "w"}, std::pair{&walk.gamma, "gamma"},
                                     std::pair{&walk.grads_after, "grads_after"}})
    check_aligned(*tensor, op, name, 16);
  for (const auto& [tensor, name] : {std::pair{&walk.d_u, "d_u"}, std::pair{&walk.d_initial, "d_initial"},
                                     std::pair{&walk.states, "states"}})
    check_aligned(*tensor, op, name, 8);
  if (walk.d_final.defined()) check_aligned(walk.d_final, op, "d_final", 8);
  if (M == 0 || N == 0) return;
  BackwardWalkParams p{};
  p.q = reinterpret_cast<const Bf16*>(walk.q.data_ptr());
  p.k = reinterpret_cast<const Bf16*>(walk.k.data_ptr());
  p.d_out = reinterpret_cast<const Bf16*>(walk.d_out.data_ptr());
  p.w = reinterpret_cast<const Bf16*>(walk.w.data_ptr());
  p.gamma = walk.gamma.data_ptr<double>();
  p.d_final = walk.d_final.defined() ? walk.d_final.data_ptr<float>() : nullptr;
  p.states = reinterpret_cast<const Bf16*>(walk.states.data_ptr());
  p.starts = walk.starts.defined() ? walk.starts.data_ptr<bool>() : nullptr;
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.num_chunks = static_cast<int>(N);
  p.grads_after = reinterpret_cast<Bf16*>(walk.grads_after.data_ptr());
  p.d_chunk_decay = walk.d_chunk_decay.data_ptr<float>();
  p.d_u = reinterpret_cast<Bf16*>(walk.d_u.data_ptr());
  p.d_initial = walk.d_initial.data_ptr<float>();
  const at::cuda::CUDAGuard guard(walk.q.device());
  const RestartSegments segments = restart_segments(walk.starts, N, M);
  p.segment_begins = segments.data();
  if (D == 32)
    launch_backward_walk_of<32>(p, M, segments.slots);
  else if (D == 64)
    launch_backward_walk_of<64>(p, M, segments.slots);
  else
    launch_backward_walk_of<128>(p, M, segments.slots);
}

}  // namespace prime::kernels::detail
