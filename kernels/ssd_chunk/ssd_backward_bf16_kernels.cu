// CUDA kernels of Mamba-2's chunked SSD backward on bf16 operands (ssd_chunk_launch.h,
// launch_ssd_backward_bf16), P = N = D, the adjoint of ssd_forward_bf16_kernels.cu. Two launches:
//  - the walk over chunks backwards (ssd_walk_bf16.cuh): G_n, the gradient of the state leaving
//    chunk n, in bf16, from G = d_final through G = e^{Gamma_end} G + (diag(e^Gamma) dY)^T C;
//  - the gradients, one block per (chunk, batch and head), with S_n the state entering the chunk
//    (the forward's walk), L_tj = e^{Gamma_t - Gamma_j} (j <= t), f_t = delta_t e^{Gamma_end - Gamma_t}:
//      M = (C B^T) o L,  P = (dY X^T) o L diag(delta)
//      d(delta x) = M^T dY + diag(e^{Gamma_end - Gamma}) B G_n^T,  dx = delta d(delta x)
//      dB = P^T C + diag(f) X G_n,  dC = P B + diag(e^Gamma) dY S_n
//    and the gradient of Gamma, summed inside the block in a fixed order:
//      dGamma_t = sum_j Q_tj - sum_i Q_it + e^{Gamma_t} C_t . (dY S_n)_t - q_t,  Q = (C B^T) o P,
//      q_t = f_t x_t . (B G_n^T)_t,  dGamma_end += sum_t q_t + e^{Gamma_end} <G_n, S_n>,
//    then d(delta A)_k = sum_{t >= k} dGamma_t, d delta_k = A d(delta A)_k + x_k . d(delta x)_k
//    (written) and sum_k d(delta A)_k delta_k (the chunk's share of dA, summed by the caller).
// Products on bf16 tensor cores (mma.sync, fp32 accumulation; bf16_tiles.cuh); M and P are rounded to bf16;
// no atomics (every sum in a fixed order: the gradients are deterministic).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <type_traits>

#include "kernels/common/bf16_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/ssd_chunk/ssd_chunk_common.cuh"
#include "kernels/ssd_chunk/ssd_chunk_launch.h"
#include "kernels/ssd_chunk/ssd_walk_bf16.cuh"

namespace prime::kernels::detail {

namespace {

using namespace bf16_tiles;
using ssd_bf16::kChunk;
using ssd_common::DeltaView;

constexpr int kGradWarps = 8;
constexpr int kGradThreads = kGradWarps * 32;
constexpr int kLdM = ld_of(kChunk);

struct GradParams {
  const Bf16 *x, *b, *c, *dy;     // [B,T,H,D]
  DeltaView delta;                // [B,T,H]
  const float* A;                 // [H]
  int T, H, num_chunks;
  const Bf16 *states, *d_locals;  // [M,N,D,D]: S_n and G_n
  void *dx, *dB, *dC;             // [B,T,H,D], fp32 or bf16
  float* d_delta;                 // [B,T,H]
  float* dA_part;                 // [M,N]
};

// Each warp streams the 16 x 16 blocks of S_n and G_n its products take, in the order it takes
// them, through a ring of four blocks in shared memory (cp.async: before a block is read, the three
// after it are on their way), and reads them by ldmatrix.
constexpr int kRing = 4;
constexpr int kRingBlock = 16 * 16;  // elements

// Shared memory: a header (Gamma [64] double; deltas [64]; the Q row sums per column block [4][64]
// and its column sums per row block [4][64]; per 16-column tile [D/16][64]: x . d(delta x),
// x . (its state part), C . (the state part of dC); the <G, S> warp sums [8]), then C, B, dY, X
// [64][ld], M, P [64][kLdM] and the warps' rings [8][4][256]: 111 KB at D = 128, two blocks per SM.
// The epilogues work in the accumulators' own layout (no scratch round trip).
template <int D>
constexpr int grad_header_bytes() {
  return (kChunk * 8 + kChunk * 4 + 8 * kChunk * 4 + 3 * (D / 16) * kChunk * 4 + kGradWarps * 4 + 127) / 128 * 128;
}

template <int D>
constexpr size_t grad_shared_bytes() {
  return grad_header_bytes<D>() + 4 * kChunk * ld_of(D) * sizeof(Bf16) + 2 * kChunk * kLdM * sizeof(Bf16) +
         kGradWarps * kRing * kRingBlock * sizeof(Bf16);
}

// Where row `row`'s 8-element half `half` of a ring block sits: the halves of rows 4..7 (mod 8)
// swapped, so the eight 16-byte rows of one ldmatrix matrix fall on distinct banks.
__device__ __forceinline__ int ring_offset(int row, int half) { return row * 16 + 8 * (half ^ ((row >> 2) & 1)); }

// The lane's ldmatrix address for the ring block at `block`: Swap as block_address (bf16_tiles.cuh).
template <bool Swap>
__device__ __forceinline__ uint32_t ring_address(const Bf16* block) {
  const int lane = threadIdx.x % 32, i = lane % 8, j = lane / 8;
  const int row = Swap ? 8 * (j / 2) : 8 * (j % 2), half = Swap ? j % 2 : j / 2;
  return shared_address(block + ring_offset(row + i, half));
}

// A warp's stream of state blocks, in the order its tasks (task = warp + 8 i; kind = task / (D/16))
// consume them: per 16-deep step, G's block for d(delta x) (stored [column][depth]: G^T's) and for
// dB, S's then G's for dC. Each block is one cp.async per lane and one commit group (an empty group
// past the end), so waiting for a block is cp.async.wait_group with a fixed count.
template <int D>
struct StateStream {
  const Bf16 *S, *G;
  Bf16* ring;
  int task, step, second, issued, used;

  __device__ __forceinline__ void issue() {
    constexpr int kTiles = D / 16;
    if (task < 3 * kTiles) {
      const int kind = task / kTiles, col0 = 16 * (task % kTiles), k0 = 16 * step;
      const int lane = threadIdx.x % 32, row = lane / 2, half = lane % 2;
      const Bf16* state = kind == 2 && !second ? S : G;
      const Bf16* src = kind == 0 ? state + (col0 + row) * D + k0 + 8 * half  // [column][depth]
                                  : state + (k0 + row) * D + col0 + 8 * half;
      cp_async16(ring + (issued % kRing) * kRingBlock + ring_offset(row, half), src);
      if (kind == 2 && !second) {
        second = 1;
      } else {
        second = 0;
        if (++step == kTiles) step = 0, task += kGradWarps;
      }
    }
    cp_async_commit();
    ++issued;
  }
  // The next block, once this lane's copies of it and of those before have landed (the caller
  // syncs the warp before reading it).
  __device__ __forceinline__ const Bf16* next() { return ring + (used++ % kRing) * kRingBlock; }
};

// Two adjacent outputs, stored with the streaming hint (st.global.cs: written once, not read here again).
template <typename Out>
__device__ __forceinline__ void store2(Out* out, float x0, float x1) {
  if constexpr (std::is_same_v<Out, float>) {
    __stcs(reinterpret_cast<float2*>(out), make_float2(x0, x1));
  } else {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(x0, x1);
    __stcs(reinterpret_cast<unsigned*>(out), *reinterpret_cast<const unsigned*>(&pair));
  }
}

// Sums over the four lanes of a quad (one accumulator row) and over the eight quads (one column).
__device__ __forceinline__ float quad_total(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float column_total(float x) {
#pragma unroll
  for (int offset = 4; offset < 32; offset <<= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// One output's 16-column tile at col0 for all four row blocks r (rows 16 r..+16):
//   in_chunk[r] = A_r (lower-triangular [64][lda], transposed when Transposed: rows 16 r of A^T
//                 need k >= 16 r, else k < 16 (r + 1)) times rows[k][col0..+16]
//   via_state[r] = left[16 r rows][0:D] times the [D][16] block of the state at col0 (state^T when
//                  StateT), its 16 x 16 blocks taken from the warp's stream (with Dot: S's block,
//                  then G's, whose elementwise products are summed into *dot).
template <int D, bool Transposed, bool StateT, bool Dot = false>
__device__ __forceinline__ void tile_products(Acc (&in_chunk)[4], Acc (&via_state)[4], const Bf16* a,
                                              const Bf16* rows, const Bf16* left, StateStream<D>& states,
                                              int col0, float* dot = nullptr) {
  constexpr int ld = ld_of(D);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    fill(in_chunk[r], 0.0f);
    fill(via_state[r], 0.0f);
  }
#pragma unroll
  for (int k0 = 0; k0 < kChunk; k0 += 16) {
    FragB bm;
    load_b(bm, rows + k0 * ld + col0, ld);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      if (Transposed ? k0 < 16 * r : k0 > 16 * r) continue;
      FragA am;
      if constexpr (Transposed)
        load_a_t(am, a + k0 * kLdM + 16 * r, kLdM);
      else
        load_a(am, a + 16 * r * kLdM + k0, kLdM);
      mma(in_chunk[r], am, bm);
    }
  }
#pragma unroll 2
  for (int k0 = 0; k0 < D; k0 += 16) {
    FragB sm;
    if constexpr (Dot)
      cp_async_wait<kRing - 2>();
    else
      cp_async_wait<kRing - 1>();
    __syncwarp();
    if constexpr (StateT) {
      ldmatrix_x4(sm.x, ring_address<true>(states.next()));  // (state^T)[k][col] = state[col][k]
    } else {
      ldmatrix_x4_transposed(sm.x, ring_address<false>(states.next()));
      if constexpr (Dot) {  // the same element of G in the same register half
        FragB gm;
        ldmatrix_x4_transposed(gm.x, ring_address<false>(states.next()));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&sm.x[j]));
          const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&gm.x[j]));
          *dot = fmaf(x.x, y.x, fmaf(x.y, y.y, *dot));
        }
      }
    }
    __syncwarp();  // every lane has read the blocks before their slots are refilled
    states.issue();
    if constexpr (Dot) states.issue();
#pragma unroll
    for (int r = 0; r < 4; ++r) {  // via_state[r] += left rows 16 r times sm
      FragA am;
      load_a(am, left + 16 * r * ld + k0, ld);
      mma(via_state[r], am, sm);
    }
  }
}

template <int D, typename Out>
__global__ void __launch_bounds__(kGradThreads, 2) ssd_backward_grad_bf16_kernel(const GradParams p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  constexpr int ld = ld_of(D), kTiles = D / 16;
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* dl = reinterpret_cast<float*>(gamma + kChunk);      // [64]
  float* q_rows = dl + kChunk;                               // [4 column blocks][64]
  float* q_cols = q_rows + 4 * kChunk;                       // [4 row blocks][64]
  float* x_full = q_cols + 4 * kChunk;                       // [tiles][64]
  float* x_state = x_full + kTiles * kChunk;                 // [tiles][64]
  float* c_state = x_state + kTiles * kChunk;                // [tiles][64]
  float* dot_warps = c_state + kTiles * kChunk;              // [8]
  Bf16* cs = reinterpret_cast<Bf16*>(shared_bytes + grad_header_bytes<D>());
  Bf16* bs = cs + kChunk * ld;
  Bf16* dys = bs + kChunk * ld;
  Bf16* xs = dys + kChunk * ld;
  Bf16* ms = xs + kChunk * ld;  // M [64][kLdM]
  Bf16* ps = ms + kChunk * kLdM;
  Bf16* ring = ps + kChunk * kLdM;  // [8 warps][kRing][256]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunk = blockIdx.x, m = blockIdx.y, b = m / p.H, h = m % p.H, t0 = chunk * kChunk;
  const size_t row_stride = static_cast<size_t>(p.H) * D;
  const size_t first_row = (static_cast<size_t>(b) * p.T + t0) * row_stride + static_cast<size_t>(h) * D;
  const size_t state_at = (static_cast<size_t>(m) * p.num_chunks + chunk) * D * D;
  const Bf16 *S = p.states + state_at, *G = p.d_locals + state_at;
  // The rows are read once (L2 evicts them first); S_n and G_n are read again and again from L2.
  const uint64_t once = l2_evict_first_policy();
  copy_async<kChunk, D, kGradThreads>(cs, p.c + first_row, row_stride, p.T - t0, once);
  copy_async<kChunk, D, kGradThreads>(bs, p.b + first_row, row_stride, p.T - t0, once);
  copy_async<kChunk, D, kGradThreads>(dys, p.dy + first_row, row_stride, p.T - t0, once);
  copy_async<kChunk, D, kGradThreads>(xs, p.x + first_row, row_stride, p.T - t0, once);
  cp_async_commit();
  StateStream<D> states{S, G, ring + warp * kRing * kRingBlock, warp, 0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < kRing; ++i) states.issue();  // the first blocks arrive while M and P are formed
  ssd_common::chunk_gamma(p.delta, p.A, b, h, t0, p.T, gamma, dl);
  cp_async_wait<kRing>();  // the rows
  __syncthreads();

  // M and P, tiles (r, c) = (w % 4, w / 4) and (w % 4, w / 4 + 2) of warp w (those above the
  // diagonal are never read), and the row and column sums of Q = (C B^T) o P.
  // In the accumulators' layout (bf16_tiles.cuh): lane 4 g + tq holds rows g, g + 8 and columns
  // 2 tq, 2 tq + 1, 8 + 2 tq, 9 + 2 tq of each 16 x 16 tile.
  const int g = lane / 4, tq = lane % 4;
  for (int tile = warp; tile < 16; tile += kGradWarps) {
    const int r = tile % 4, c = tile / 4;
    if (c > r) continue;
    Acc cb, dx;
    gram_tile<D>(cb, cs, bs, 16 * r, 16 * c);
    gram_tile<D>(dx, dys, xs, 16 * r, 16 * c);
    float row_sum[2] = {0.0f, 0.0f}, col_sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      const int half = (e / 2) % 2, i = 16 * r + g + 8 * half, j = 16 * c + 8 * (e / 4) + 2 * tq;
      float mv[2], pv[2];
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const float decay = j + k <= i ? expf(static_cast<float>(gamma[i] - gamma[j + k])) : 0.0f;
        mv[k] = cb.x[e + k] * decay;
        pv[k] = dx.x[e + k] * decay * dl[j + k];
        const float q = cb.x[e + k] * pv[k];
        row_sum[half] += q;
        col_sum[2 * (e / 4) + k] += q;
      }
      *reinterpret_cast<__nv_bfloat162*>(ms + i * kLdM + j) = __floats2bfloat162_rn(mv[0], mv[1]);
      *reinterpret_cast<__nv_bfloat162*>(ps + i * kLdM + j) = __floats2bfloat162_rn(pv[0], pv[1]);
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float sum = quad_total(row_sum[half]);
      if (tq == 0) q_rows[c * kChunk + 16 * r + g + 8 * half] = sum;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // over the 16 rows
      const float sum = column_total(col_sum[k]);
      if (g == 0) q_cols[r * kChunk + 16 * c + 8 * (k / 2) + 2 * tq + k % 2] = sum;
    }
  }
  __syncthreads();

  // Tasks (output, 16-column tile), all four row blocks each: warp w takes tasks w, w + 8, ...
  const float gamma_end = static_cast<float>(gamma[kChunk - 1]);
  float gs_part = 0.0f;  // this lane's share of <G_n, S_n>, from the dC tasks
  for (int task = warp; task < 3 * kTiles; task += kGradWarps) {
    const int kind = task / kTiles, tile = task % kTiles, col0 = 16 * tile;
    Acc in_chunk[4], via_state[4];
    if (kind == 0)  // d(delta x) = M^T dY + diag(e^{Gamma_end - Gamma}) B G^T
      tile_products<D, /*Transposed=*/true, /*StateT=*/true>(in_chunk, via_state, ms, dys, bs, states, col0);
    else if (kind == 1)  // dB = P^T C + diag(f) X G
      tile_products<D, true, false>(in_chunk, via_state, ps, cs, xs, states, col0);
    else  // dC = P B + diag(e^Gamma) dY S, and the lane's share of <G, S>
      tile_products<D, false, false, true>(in_chunk, via_state, ps, bs, dys, states, col0, &gs_part);
    Out* out = static_cast<Out*>(kind == 0 ? p.dx : kind == 1 ? p.dB : p.dC);
    const Bf16* dotted = kind == 2 ? cs : xs;  // the row partials' other operand
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float full_sum[2] = {0.0f, 0.0f}, state_sum[2] = {0.0f, 0.0f}, factor[2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = 16 * r + g + 8 * half;
        const float g_t = static_cast<float>(gamma[row]);
        factor[half] = kind == 2 ? expf(g_t) : kind == 0 ? expf(gamma_end - g_t) : dl[row] * expf(gamma_end - g_t);
      }
#pragma unroll
      for (int e = 0; e < 8; e += 2) {
        const int half = (e / 2) % 2, row = 16 * r + g + 8 * half, col = col0 + 8 * (e / 4) + 2 * tq;
        const float s0 = factor[half] * via_state[r].x[e], s1 = factor[half] * via_state[r].x[e + 1];
        float o0 = in_chunk[r].x[e] + s0, o1 = in_chunk[r].x[e + 1] + s1;
        const float2 w = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dotted + row * ld + col));
        full_sum[half] += w.x * o0 + w.y * o1;
        state_sum[half] += w.x * s0 + w.y * s1;
        if (kind == 0) o0 *= dl[row], o1 *= dl[row];
        if (t0 + row < p.T) store2(out + ((static_cast<size_t>(b) * p.T + t0 + row) * p.H + h) * D + col, o0, o1);
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = 16 * r + g + 8 * half;
        const float full = quad_total(full_sum[half]), state = quad_total(state_sum[half]);
        if (tq == 0) {
          if (kind == 0) {
            x_full[tile * kChunk + row] = full;
            x_state[tile * kChunk + row] = state;
          } else if (kind == 2) {
            c_state[tile * kChunk + row] = state;
          }
        }
      }
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) gs_part += __shfl_xor_sync(0xffffffffu, gs_part, offset);
  if (lane == 0) dot_warps[warp] = gs_part;
  __syncthreads();
  if (warp != 0) return;

  // Warp 0: dGamma for rows lane and lane + 32, its suffix sums, d delta and the dA share.
  double d_gamma[2], q_sum = 0.0;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = lane + 32 * half, block = t / 16;
    double pair = 0.0, state_c = 0.0, state_x = 0.0;
    for (int c = 0; c <= block; ++c) pair += q_rows[c * kChunk + t];
    for (int r = block; r < 4; ++r) pair -= q_cols[r * kChunk + t];
    for (int k = 0; k < kTiles; ++k) state_c += c_state[k * kChunk + t], state_x += x_state[k * kChunk + t];
    const double q = static_cast<double>(dl[t]) * state_x;
    q_sum += q;
    d_gamma[half] = pair + state_c - q;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) q_sum += __shfl_xor_sync(0xffffffffu, q_sum, offset);
  double gs_dot = 0.0;  // <G_n, S_n>
  for (int w = 0; w < kGradWarps; ++w) gs_dot += dot_warps[w];
  if (lane == 31) d_gamma[1] += q_sum + static_cast<double>(expf(gamma_end)) * gs_dot;
  // Suffix sums over t = 63..0: the second half's within itself, the first half's plus its total.
  double suffix[2] = {d_gamma[0], d_gamma[1]};
#pragma unroll
  for (int half = 1; half >= 0; --half)
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const double next = __shfl_down_sync(0xffffffffu, suffix[half], offset);
      if (lane + offset < 32) suffix[half] += next;
    }
  suffix[0] += __shfl_sync(0xffffffffu, suffix[1], 0);
  const float a = p.A[h];
  double share = 0.0;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = lane + 32 * half;
    double x_dot = 0.0;
    for (int k = 0; k < kTiles; ++k) x_dot += x_full[k * kChunk + t];
    if (t0 + t < p.T)
      p.d_delta[(static_cast<size_t>(b) * p.T + t0 + t) * p.H + h] = static_cast<float>(suffix[half] * a + x_dot);
    share += suffix[half] * dl[t];
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) share += __shfl_xor_sync(0xffffffffu, share, offset);
  if (lane == 0) p.dA_part[static_cast<size_t>(m) * p.num_chunks + chunk] = static_cast<float>(share);
}

template <int D>
void launch_grad(const GradParams& p, int64_t M, bool fp32_out) {
  const dim3 grid(static_cast<unsigned>(p.num_chunks), static_cast<unsigned>(M));
  if (fp32_out)
    launch_with_shared(ssd_backward_grad_bf16_kernel<D, float>, grid, grad_shared_bytes<D>(), kGradThreads, p,
                       "ssd_backward_grad_bf16_kernel");
  else
    launch_with_shared(ssd_backward_grad_bf16_kernel<D, Bf16>, grid, grad_shared_bytes<D>(), kGradThreads, p,
                       "ssd_backward_grad_bf16_kernel");
}

}  // namespace

void launch_ssd_backward_bf16(const SsdBackwardBf16Operands& o) {
  const char* op = "ssd_backward_bf16";
  ssd_bf16::check_operands(op, o.x, o.delta, o.A, o.Bm, o.Cm, o.restart);
  const int64_t B = o.x.size(0), T = o.x.size(1), H = o.x.size(2), D = o.x.size(3), M = B * H;
  const int64_t N = (T + kChunk - 1) / kChunk;
  check_operand_sizes(o.dy, op, "dy", at::kBFloat16, o.x.sizes());
  check_operand_sizes(o.states, op, "states", at::kBFloat16, {M, N, D, D});
  const at::ScalarType out_type = o.dx.scalar_type();
  PRIME_CHECK(out_type == at::kFloat || out_type == at::kBFloat16, op, ": dx, dB, dC must be fp32 or bf16");
  for (const auto& [tensor, name] : {std::pair{&o.dx, "dx"}, std::pair{&o.dB, "dB"}, std::pair{&o.dC, "dC"}})
    check_operand_sizes(*tensor, op, name, out_type, o.x.sizes());
  check_operand_sizes(o.d_delta, op, "d_delta", at::kFloat, {B, T, H});
  check_operand_sizes(o.dA_part, op, "dA_part", at::kFloat, {M, N});
  for (const auto& [tensor, name] : {std::pair{&o.dy, "dy"}, std::pair{&o.states, "states"}, std::pair{&o.dx, "dx"},
                                     std::pair{&o.dB, "dB"}, std::pair{&o.dC, "dC"}})
    check_aligned(*tensor, op, name, 16);
  for (const at::Tensor* operand : {&o.dy, &o.states, &o.dx, &o.dB, &o.dC, &o.d_delta, &o.dA_part})
    PRIME_CHECK(operand->device() == o.x.device(), op, ": operands on different devices");
  const at::cuda::CUDAGuard guard(o.x.device());
  ssd_bf16::run_walk</*Reverse=*/true>(op, o.dy, o.Cm, o.delta, o.A, o.restart, o.d_locals, o.d_final, o.d_state);
  if (M == 0 || N == 0) return;
  GradParams p{};
  p.x = reinterpret_cast<const Bf16*>(o.x.data_ptr());
  p.b = reinterpret_cast<const Bf16*>(o.Bm.data_ptr());
  p.c = reinterpret_cast<const Bf16*>(o.Cm.data_ptr());
  p.dy = reinterpret_cast<const Bf16*>(o.dy.data_ptr());
  p.delta = ssd_common::make_delta_view(o.delta);
  p.A = o.A.data_ptr<float>();
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.num_chunks = static_cast<int>(N);
  p.states = reinterpret_cast<const Bf16*>(o.states.data_ptr());
  p.d_locals = reinterpret_cast<const Bf16*>(o.d_locals.data_ptr());
  p.dx = o.dx.data_ptr();
  p.dB = o.dB.data_ptr();
  p.dC = o.dC.data_ptr();
  p.d_delta = o.d_delta.data_ptr<float>();
  p.dA_part = o.dA_part.data_ptr<float>();
  const bool fp32_out = out_type == at::kFloat;
  if (D == 32)
    launch_grad<32>(p, M, fp32_out);
  else if (D == 64)
    launch_grad<64>(p, M, fp32_out);
  else
    launch_grad<128>(p, M, fp32_out);
}

}  // namespace prime::kernels::detail
