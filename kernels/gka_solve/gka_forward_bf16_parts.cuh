// The parts of GKA's bf16 forward's per-chunk kernel (gka_forward_bf16_kernels.cu, one block per
// chunk) that every form of its solve shares: the kernel's parameters, the prologue (||H_0||^2, the
// squared gram, k_j^T H_0 k_j, ||H_t||_F), W, and the epilogue's two products (the chunk matrix and o).
// Each part does the same operations in the same order whatever the block's warps, so the forms that
// share a solve's result share o bit for bit.
#pragma once

#include <ATen/ATen.h>

#include <type_traits>

#include "kernels/common/cp_async.cuh"
#include "kernels/gka_solve/gka_solve_bf16.cuh"
#include "kernels/ssd_chunk/ssd_chunk_common.cuh"

namespace prime::kernels::detail::gka_forward {

using namespace gka_bf16;

constexpr int kChunk = 64;
constexpr int kWarps = kThreads / 32;  // the roles' warps (gka_solve_bf16.cuh's Roles)
constexpr int kLdW = kChunk + 1;       // fp32 [64][65]: W and the squared gram

constexpr int kSplitLeft = 2;  // q~'s products: q~ split (hi + lo), bf16 right operand

struct ForwardParams {
  const Bf16 *q, *k, *v;   // [B,T,H,D]
  const float* log_decay;  // [B,T,H]
  const float* alpha;      // [B,T,H] or null (alpha = 1)
  const Bf16* h_states;    // [M,N,D,D]: H entering each chunk
  const Bf16* s_states;    // [M,N,D,D]: S^T entering each chunk ([v dim][k dim])
  int T, H, num_chunks;
  double ridge_strength;
  int num_iter;
  float output_scale;
  void* o;  // [B,T,H,D], fp32 or bf16
};

// Where one chunk of one batch and head starts in the operands.
struct ChunkPlace {
  int n, m, valid;            // chunk, batch * H + head, its rows inside T
  size_t row_stride;          // elements from one q, k, v row to the next
  size_t first_row;           // q, k, v, o: the chunk's row 0, its head's column 0
  size_t gate_first;          // log_decay, alpha: the chunk's row 0
  size_t state_at;            // h_states, s_states: the state entering the chunk

  __device__ ChunkPlace(const ForwardParams& p, int chunk, int bh, int D) : n(chunk), m(bh) {
    const int b = m / p.H, h = m % p.H, t0 = n * kChunk;
    valid = min(kChunk, p.T - t0);
    row_stride = static_cast<size_t>(p.H) * D;
    first_row = (static_cast<size_t>(b) * p.T + t0) * row_stride + static_cast<size_t>(h) * D;
    gate_first = (static_cast<size_t>(b) * p.T + t0) * p.H + h;
    state_at = (static_cast<size_t>(m) * p.num_chunks + n) * D * D;
  }
};

// The 16 warps' roles (gka_solve_bf16.cuh's Roles) played by a block of Warps warps: warp w plays
// w, w + Warps, ...
template <int Warps, typename F>
__device__ __forceinline__ void for_each_role(int d, F&& f) {
  for (int role = static_cast<int>(threadIdx.x / 32); role < kWarps; role += Warps) f(Roles(kChunk, d, role));
}

// The two recurrences' scan for ||H_t||_F (frob_by_recurrences below), warp 0 alone: decay(t) = W_{t,t-1} = e^{g_t}
// (t >= 1), cross_term(t) = k_t^T H_0 k_t and intra_term(t) = 2 sum_{i<t} W_ti (k_t . k_i)^2 + (k_t . k_t)^2 of each
// row; ||H_t||_F into frob[64] (0 past `valid`).
template <typename Decay, typename CrossTerm, typename IntraTerm>
__device__ __forceinline__ void frob_scan(float h0_norm2, Decay&& decay, CrossTerm&& cross_term, IntraTerm&& intra_term,
                                          const float* from_start, float* frob, int valid) {
  const int lane = threadIdx.x % 32;
  // Lane l: rows 2 l and 2 l + 1. Each recurrence is x_t = a_t x_{t-1} + b_t (x_{-1} = 0, a_0 = 0); the
  // lane's two steps compose to x -> a x + b, and a scan over the lanes composes those.
  float d[2], b_cross[2], b_intra[2];
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int t = 2 * lane + u;
    d[u] = t > 0 ? decay(t) : 0.0f;
    b_cross[u] = cross_term(t);
    b_intra[u] = intra_term(t);
  }
  float a_cross = d[1] * d[0], c_cross = d[1] * b_cross[0] + b_cross[1];
  float a_intra = (d[1] * d[1]) * (d[0] * d[0]), c_intra = (d[1] * d[1]) * b_intra[0] + b_intra[1];
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const float pa_cross = __shfl_up_sync(0xffffffffu, a_cross, offset);
    const float pc_cross = __shfl_up_sync(0xffffffffu, c_cross, offset);
    const float pa_intra = __shfl_up_sync(0xffffffffu, a_intra, offset);
    const float pc_intra = __shfl_up_sync(0xffffffffu, c_intra, offset);
    if (lane >= offset) {  // this segment after the one before it
      c_cross = a_cross * pc_cross + c_cross;
      a_cross *= pa_cross;
      c_intra = a_intra * pc_intra + c_intra;
      a_intra *= pa_intra;
    }
  }
  // The rows before the lane's (lane l - 1's result), then its two rows one step at a time.
  float cross = __shfl_up_sync(0xffffffffu, c_cross, 1), intra = __shfl_up_sync(0xffffffffu, c_intra, 1);
  if (lane == 0) cross = intra = 0.0f;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int t = 2 * lane + u;
    cross = d[u] * cross + b_cross[u];
    intra = (d[u] * d[u]) * intra + b_intra[u];
    const float e = from_start[t];
    const float square = e * e * h0_norm2 + 2.0f * e * cross + intra;
    frob[t] = t < valid ? sqrtf(fmaxf(square, 1e-30f)) : 0.0f;
  }
}

// ||H_t||_F of the chunk's rows into frob[64] (0 past `valid`), from W and the squared gram [64][kLdW],
// khk [64][4] (k_j^T H_0 k_j in D / 32 parts; overwritten) and ||H_0||^2 in kWarps parts; the
// block's Warps warps. Two ways, within 1e-6 of float64 each; the forms that take the same way get the
// same bits. The caller synchronises before and after.
//
// ||H_t||_F^2 = e^{2 G_t} ||H_0||^2 + 2 e^{G_t} cross_t + intra_t (gka_chunked.cpp) with cross_t =
// sum_{j<=t} W_tj k_j^T H_0 k_j and intra_t = sum_{i,j<=t} W_ti W_tj (k_i . k_j)^2. W_ti = d_t W_{t-1,i}
// for i < t (d_t = W_{t,t-1} = e^{g_t}, W_tt = 1), so both are first-order recurrences over t:
//   cross_t = d_t cross_{t-1} + khk_t,
//   intra_t = d_t^2 intra_{t-1} + 2 sum_{i<t} W_ti (k_t . k_i)^2 + (k_t . k_t)^2,
// every term >= 0 (no cancellation; within 1e-6 of float64, as the direct sums are:
// experiments/gka_bf16_forward/frob_recurrence.py): O(C^2) work where the direct sums took O(C^3).
// First each row's terms (a warp per row, lanes over i), written over its khk parts (which only this
// warp reads); then warp 0 scans both recurrences.
template <int D, int Warps>
__device__ __forceinline__ void frob_by_recurrences(const float* W, const float* gram2, float* khk,
                                                    const float* h0_parts, const float* from_start, float* frob,
                                                    int valid) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int t = warp; t < kChunk; t += Warps) {
    float sum = 0.0f;
    for (int i = lane; i < t; i += 32) sum += W[t * kLdW + i] * gram2[t * kLdW + i];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    float khk_t = 0.0f;
    for (int c = 0; c < D / 32; ++c) khk_t += khk[t * 4 + c];
    __syncwarp();  // every lane has read the parts
    if (lane == 0) {
      khk[t * 4] = khk_t;
      khk[t * 4 + 1] = 2.0f * sum + gram2[t * kLdW + t];
    }
  }
  __syncthreads();
  if (warp == 0) {
    float h0_norm2 = 0.0f;
    for (int i = 0; i < kWarps; ++i) h0_norm2 += h0_parts[i];
    frob_scan(
        h0_norm2, [&](int t) { return W[t * kLdW + t - 1]; }, [&](int t) { return khk[t * 4]; },
        [&](int t) { return khk[t * 4 + 1]; }, from_start, frob, valid);
  }
}

// The direct sums, one warp per row t (rows warp, warp + Warps, ...), lanes over j = lane, lane + 32.
template <int D, int Warps>
__device__ __forceinline__ void frob_by_direct_sums(const float* W, const float* gram2, const float* khk,
                                                    const float* h0_parts, const float* from_start, float* frob,
                                                    int valid) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float h0_norm2 = 0.0f;
  for (int i = 0; i < kWarps; ++i) h0_norm2 += h0_parts[i];
  for (int t = warp; t < kChunk; t += Warps) {
    float cross = 0.0f, intra = 0.0f;
    for (int half = 0; half < 2; ++half) {
      const int j = lane + 32 * half;
      float khk_j = 0.0f;
      for (int c = 0; c < D / 32; ++c) khk_j += khk[j * 4 + c];
      const float w_tj = W[t * kLdW + j];
      cross += w_tj * khk_j;
      float weighted = 0.0f;  // sum_i (k_j . k_i)^2 W_ti
      for (int i = 0; i <= t; ++i) weighted += gram2[j * kLdW + i] * W[t * kLdW + i];
      intra += w_tj * weighted;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      cross += __shfl_xor_sync(0xffffffffu, cross, offset);
      intra += __shfl_xor_sync(0xffffffffu, intra, offset);
    }
    if (lane == 0) {
      const float e = from_start[t];
      const float square = e * e * h0_norm2 + 2.0f * e * cross + intra;
      frob[t] = t < valid ? sqrtf(fmaxf(square, 1e-30f)) : 0.0f;
    }
  }
}

// G_t (float64 sums of the chunk's log decays, 0 past T) into gamma [64] by warp 0 (scratch [64]); the
// caller synchronises before gamma is read.
__device__ __forceinline__ void scan_chunk_gamma(const ForwardParams& p, const ChunkPlace& c, double* gamma,
                                                 float* scratch) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const float2 logs = make_float2(lane < c.valid ? p.log_decay[c.gate_first + lane * p.H] : 0.0f,
                                    lane + 32 < c.valid ? p.log_decay[c.gate_first + (lane + 32) * p.H] : 0.0f);
    ssd_common::scan_gamma(logs, 1.0f, gamma, scratch);
  }
}

// The prologue's loads, the block's Threads threads: the keys K [64][ld_of(D)] and H_0 [D][ld_of(D)]
// by cp.async (with whatever `more` issues, in the same group), G_t into gamma [64] (scan_chunk_gamma);
// then the wait and a block barrier.
template <int D, int Threads, typename More>
__device__ __forceinline__ void load_prologue(const ForwardParams& p, const ChunkPlace& c, Bf16* keys, Bf16* h0,
                                              double* gamma, float* scratch, More&& more) {
  copy_async<kChunk, D, Threads>(keys, p.k + c.first_row, c.row_stride, c.valid);
  copy_async<D, D, Threads>(h0, p.h_states + c.state_at, D);
  more();
  cp_async_commit();
  scan_chunk_gamma(p, c, gamma, scratch);
  cp_async_wait<0>();
  __syncthreads();
}

// e^{G_t} into from_start [64] (0 past the chunk's rows).
__device__ __forceinline__ void fill_from_start(float* from_start, const double* gamma, int valid) {
  if (threadIdx.x < kChunk)
    from_start[threadIdx.x] = threadIdx.x < valid ? expf(static_cast<float>(gamma[threadIdx.x])) : 0.0f;
}

// W_tj = e^{G_t - G_j} for j <= t < valid, 0 elsewhere.
__device__ __forceinline__ float weight_at(const double* gamma, int t, int j, int valid) {
  return t < valid && j <= t ? expf(static_cast<float>(gamma[t] - gamma[j])) : 0.0f;
}

// W (weight_at) into W [64][kLdW]; the block's Threads threads.
template <int Threads>
__device__ __forceinline__ void fill_w(float* W, const double* gamma, int valid) {
  for (int i = threadIdx.x; i < kChunk * kChunk; i += Threads) {
    const int t = i / kChunk, j = i % kChunk;
    W[t * kLdW + j] = weight_at(gamma, t, j, valid);
  }
}

// The prologue's products from the keys K [64][ld] and H_0 [D][ld] (bf16, shared): ||H_0||^2 in kWarps
// parts (part w as warp w of 16 sums it), (k_i . k_j)^2 into gram2 [64][kLdW] and k_j^T H_0 k_j in D / 32
// parts into khk [64][4]; the block's Warps warps. The caller synchronises before and after.
template <int D, int Warps>
__device__ __forceinline__ void prologue_products(const SplitMatrix& K, const SplitMatrix& H, int ld, float* gram2,
                                                  float* khk, float* h0_parts) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  // ||H_0||^2 in 16 parts summed in a fixed order, part w as warp w of 16 sums it (whatever the
  // block's warps: every form sees the same ||H_t||_F to the bit, and so the same solve).
  for (int part = warp; part < kWarps; part += Warps) {
    float sum = 0.0f;
    for (int i = 32 * part + lane; i < D * D / 2; i += kThreads) {
      const int row = (2 * i) / D, col = (2 * i) % D;
      const float2 pair = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(H.hi + row * ld + col));
      sum += pair.x * pair.x + pair.y * pair.y;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) h0_parts[part] = sum;
  }
  for_each_role<Warps>(D, [&](const Roles& r) {
    if (r.p_owner) {  // (k_i . k_j)^2 for the lower tile (pr, pc) and its mirror
      Acc gram[1];
      fill(gram[0], 0.0f);
      split_row_block_product<1, 1, /*Transposed=*/true>(gram, K, 16 * r.pr * ld, ld, D, K, ld, 16 * r.pc);
      for_each_tile_pair(16 * r.pr, 16 * r.pc, [&](int e, int row, int col) {
        for (int i = 0; i < 2; ++i) {
          if (col + i > row) continue;  // one writer per element: the diagonal tile's lower half
          const float square = gram[0].x[e + i] * gram[0].x[e + i];
          gram2[row * kLdW + col + i] = square;
          gram2[(col + i) * kLdW + row] = square;
        }
      });
    }
    if (r.owner) {  // k_j^T H_0 k_j: this block's columns of (K H_0) o K, summed over the quad
      Acc z[kTiles];
#pragma unroll
      for (int j = 0; j < kTiles; ++j) fill(z[j], 0.0f);
      split_row_block_product<1, kTiles>(z, K, 16 * r.rb * ld, ld, D, H, ld, r.c0);
      float row_sum[2] = {0.0f, 0.0f};  // rows g and g + 8
      for_each_block_pair(16 * r.rb, r.c0, [&](int j, int e, int row, int col) {
        const float2 key = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(K.hi + row * ld + col));
        row_sum[(e / 2) % 2] += z[j].x[e] * key.x + z[j].x[e + 1] * key.y;
      });
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 1);
        row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 2);
      }
      if (t4 == 0) {
        khk[(16 * r.rb + g) * 4 + r.c0 / 32] = row_sum[0];
        khk[(16 * r.rb + g + 8) * 4 + r.c0 / 32] = row_sum[1];
      }
    }
  });
}

// q~ = scale (q + alpha (x - q)) for the pair (row, col), (row, col + 1) of the chunk's x: what X's
// split parts hold at that place for the epilogue's products (0 past the chunk's rows).
__device__ __forceinline__ float2 q_tilde(const ForwardParams& p, const ChunkPlace& c, int row, int col, float2 x) {
  float2 mixed = make_float2(0.0f, 0.0f);
  if (row < c.valid) {
    const float2 qv =
        __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p.q + c.first_row + row * c.row_stride + col));
    const float alpha = p.alpha ? p.alpha[c.gate_first + row * p.H] : 1.0f;
    mixed = p.alpha ? make_float2(qv.x + alpha * (x.x - qv.x), qv.y + alpha * (x.y - qv.y)) : x;
  }
  return make_float2(mixed.x * p.output_scale, mixed.y * p.output_scale);
}

// The chunk matrix (q~ K^T) o W in bf16 into P [64][ld_p] from q~ (X, split) and the keys K, both
// [64][ld_d], W_tj = w_at(t, j); the block's Warps warps each computing its roles' lower tiles.
template <int D, int Warps, typename WAt>
__device__ __forceinline__ void chunk_matrix(const SplitMatrix& X, const SplitMatrix& K, int ld_d, const SplitMatrix& P,
                                             int ld_p, WAt&& w_at) {
  for_each_role<Warps>(D, [&](const Roles& r) {
    if (!r.p_owner) return;
    Acc scores[1];
    fill(scores[0], 0.0f);
    split_row_block_product<kSplitLeft, 1, /*Transposed=*/true>(scores, X, 16 * r.pr * ld_d, ld_d, D, K, ld_d,
                                                                16 * r.pc);
    for_each_tile_pair(16 * r.pr, 16 * r.pc, [&](int e, int row, int col) {
      store_split<false>(P, row * ld_p + col, scores[0].x[e] * w_at(row, col), scores[0].x[e + 1] * w_at(row, col + 1));
    });
  });
}

// o = e^{G} o (q~ S_0) + P V for o's 16 x 32 blocks, into p.o: q~ (X, split) [64][ld_d]; S_0^T (S)
// [D][ld_d]; the chunk matrix P [64][ld_p]; V [64][ld_v]. Block i (row block i / width, columns
// 32 (i % width)) goes to warp i % Warps: the roles' owner blocks as for_each_role hands them out.
template <int D, int Warps, typename Out>
__device__ __forceinline__ void write_output(const ForwardParams& p, const ChunkPlace& c, const SplitMatrix& X,
                                             int ld_d, const SplitMatrix& S, const Bf16* P, int ld_p, const Bf16* V,
                                             int ld_v, const float* from_start) {
  constexpr int width = D / 32;
  const int g = (threadIdx.x % 32) / 4;
  Out* out = static_cast<Out*>(p.o);
  for (int block = static_cast<int>(threadIdx.x / 32); block < (kChunk / 16) * width; block += Warps) {
    const int rb = block / width, c0 = 32 * (block % width);
    Acc o[kTiles];
#pragma unroll
    for (int j = 0; j < kTiles; ++j) fill(o[j], 0.0f);
    // q~ S_0: B[k][n] = S_0[k][n] = S_0^T[n][k], S_0^T's rows in shared memory.
    split_row_block_product<kSplitLeft, kTiles, /*Transposed=*/true>(o, X, 16 * rb * ld_d, ld_d, D, S, ld_d, c0);
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 8; ++e) o[j].x[e] *= from_start[16 * rb + g + 8 * ((e / 2) % 2)];
    }
    const SplitMatrix chunk{const_cast<Bf16*>(P), nullptr}, values{const_cast<Bf16*>(V), nullptr};
    split_row_block_product<1, kTiles>(o, chunk, 16 * rb * ld_p, ld_p, 16 * (rb + 1), values, ld_v, c0);
    for_each_block_pair(16 * rb, c0, [&](int j, int e, int row, int col) {
      if (row >= c.valid) return;
      Out* at = out + c.first_row + row * c.row_stride + col;
      if constexpr (std::is_same_v<Out, float>)
        *reinterpret_cast<float2*>(at) = make_float2(o[j].x[e], o[j].x[e + 1]);
      else
        *reinterpret_cast<__nv_bfloat162*>(at) = __floats2bfloat162_rn(o[j].x[e], o[j].x[e + 1]);
    });
  }
}

}  // namespace prime::kernels::detail::gka_forward

namespace prime::kernels::detail {

// The bf16 forward at D = 128 with the solve on one warpgroup a chunk, in three launches on the current stream
// (gka_forward_bf16_one_kernels.cu): p as the per-chunk kernel takes it, M = B H, o fp32 or bf16; its workspace
// from `options`' device.
void launch_gka_forward_bf16_one_group(const gka_forward::ForwardParams& p, int64_t M, bool fp32_out,
                                       const at::TensorOptions& options);

}  // namespace prime::kernels::detail
