// GKA's chunked Chebyshev solve in gka_solve_bf16.cuh's bf16 form on one warpgroup a chunk at D = 128, so that
// two chunks share a multiprocessor (kernels/README.md, gka_solve: the budget for that form). The products and
// their order are gka_solve_bf16_wgmma.cuh's (P = x_lo K^T + x_hi K^T; Y = bf16(e^{G} o x) H_0 + bf16(P o W) K),
// but the one warpgroup holds all 128 columns of x (64 registers a thread), so P needs no exchange between groups
// and an iteration no block barrier; X H_0's left operand comes from registers as X K^T's does (no X_sw in shared
// memory). x_prev, W and q (the update scales q by its row's factor) wait in shared memory:
//   keys K [64][128] and H_0 [128][128] bf16, swizzled (wgmma_layout.h), 1024-byte aligned;
//   x_prev: float4 [16][128], thread i's elements 4 v .. 4 v + 3 at [v][i];
//   W at the thread's elements of P: float4 [8][128]; q at its elements of x: bf16 pairs, uint4 [8][128].
// 112 KB with the keys and H_0: two blocks in a multiprocessor's 228 KB (with 1 KB each for alignment).
// Per iteration: P's 16 MMAs issued, bf16(e^{G} o x) formed while they run; P o W to bf16 pairs; Y's two
// 64-column panels issued as two batches (X H_0 and P K on each), the first panel's update while the second
// runs. The Chebyshev update's terms are fused in another order than the two-group form's (update below); the
// MMAs add in their own order.
#pragma once

#include "kernels/common/bf16_split_tiles.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/gka_solve/gka_chebyshev.cuh"
#include "kernels/gka_solve/gka_solve_wgmma_descriptors.h"

namespace prime::kernels::detail::gka_bf16 {

using gka::ChebyshevOmegas;
using gka::RowFactors;
using bf16_tiles::bf16_pair;

constexpr int kOneGroupKeysBytes = 64 * 128 * 2, kOneGroupH0Bytes = 128 * 128 * 2;
constexpr int kOneGroupSharedBytes = kOneGroupKeysBytes + kOneGroupH0Bytes + 16 * 128 * 16 + 8 * 128 * 16 +
                                     8 * 128 * 16;

// The one-group solve's shared operands (see above), laid out from a block's dynamic shared memory, which holds
// kOneGroupSharedBytes and up to 1,023 bytes more for the alignment.
struct OneGroupOperands {
  unsigned char* keys;  // swizzled [64][128]
  unsigned char* h0;    // swizzled [128][128]
  float4* x_prev;       // [16][128]
  float4* weights;      // [8][128]
  uint4* q;             // [8][128]

  __device__ explicit OneGroupOperands(unsigned char* shared)
      : keys(wgmma::align_1024(shared)),
        h0(keys + kOneGroupKeysBytes),
        x_prev(reinterpret_cast<float4*>(h0 + kOneGroupH0Bytes)),
        weights(x_prev + 16 * 128),
        q(reinterpret_cast<uint4*>(weights + 8 * 128)) {}
};

// Rows [Rows][128] bf16 from src (row stride src_ld elements, rows 16-byte aligned) into the swizzled layout at
// dst, 16 bytes a thread and step (the block's 128 threads); rows at or past `valid` are zeros (not read).
template <int Rows>
__device__ __forceinline__ void copy_swizzled_rows(unsigned char* dst, const __nv_bfloat16* src, size_t src_ld,
                                                   int valid) {
  for (int i = threadIdx.x; i < Rows * 16; i += 128) {
    const int row = i / 16, col = 8 * (i % 16);
    const uint4 value =
        row < valid ? *reinterpret_cast<const uint4*>(src + row * src_ld + col) : make_uint4(0u, 0u, 0u, 0u);
    *reinterpret_cast<uint4*>(dst + wgmma::sw128_offset(row, col, Rows)) = value;
  }
}

struct OneGroupSolve {
  static constexpr int kD = 128, kAcc = 64;  // x's elements a thread: two 64-column panels of 32
  RowFactors rows[2];                        // rows accumulator_row(0) and accumulator_row(2)
  float x[kAcc];

  // Element e of x (panel e / 32) sits at row accumulator_row(e % 32), column 64 (e / 32) + accumulator_col(e % 32).
  __device__ static int col_of(int e) { return 64 * (e / 32) + wgmma::accumulator_col(e % 32); }

  // x = eta q from q's bf16 pairs (q_pair(row, col): the two bf16 values at (row, col), (row, col + 1), as a
  // uint32_t), q's pairs into ops.q; W's elements (w_at(t, s)) into ops.weights. Rows at or past `valid` keep x
  // at zero (their factors are zero). The caller fences the async proxy and takes a barrier before run().
  template <typename QPair, typename WAt>
  __device__ __forceinline__ void start(const OneGroupOperands& ops, int valid, const float* frob,
                                        const float* from_start, double ridge_strength, QPair&& q_pair, WAt&& w_at) {
    const int thread = threadIdx.x % 128;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      rows[i] = RowFactors(frob, from_start, wgmma::accumulator_row(2 * i), valid, ridge_strength);
    uint32_t pairs[kAcc / 2];
#pragma unroll
    for (int e = 0; e < kAcc; e += 2) {
      pairs[e / 2] = q_pair(wgmma::accumulator_row(e % 32), col_of(e));
      const float2 value = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pairs[e / 2]));
      const float eta = rows[(e / 2) % 2].eta;
      x[e] = eta * value.x;
      x[e + 1] = eta * value.y;
    }
#pragma unroll
    for (int v = 0; v < 8; ++v)
      ops.q[v * 128 + thread] = make_uint4(pairs[4 * v], pairs[4 * v + 1], pairs[4 * v + 2], pairs[4 * v + 3]);
#pragma unroll
    for (int v = 0; v < 8; ++v) {
      float w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = 4 * v + i;
        w[i] = w_at(wgmma::accumulator_row(e), wgmma::accumulator_col(e));
      }
      ops.weights[v * 128 + thread] = make_float4(w[0], w[1], w[2], w[3]);
    }
  }

  // The N iterations; x then holds the solve's result.
  __device__ __forceinline__ void run(const OneGroupOperands& ops, double ridge_strength, int num_iter) {
    ChebyshevOmegas omegas(ridge_strength);
    const uint32_t keys = shared_address(ops.keys), h0 = shared_address(ops.h0);
    const WgmmaDescriptors<kD> panel0(keys, keys, h0, 0), panel1(keys, keys, h0, 64);
    // The accumulators, zeroed once: the first MMA of each batch overwrites them (the asm reads them all the same).
    float p[32], y0[32], y1[32];
#pragma unroll
    for (int e = 0; e < 32; ++e) p[e] = y0[e] = y1[e] = 0.0f;
    // x_prev's place may hold the caller's scratch until now (the barrier before run); the thread's own elements.
#pragma unroll
    for (int v = 0; v < 16; ++v) ops.x_prev[v * 128 + threadIdx.x % 128] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int iteration = 0; iteration < num_iter; ++iteration)
      step(ops, panel0, panel1, p, y0, y1, iteration, static_cast<float>(omegas.next()));
  }

 private:
  __device__ static uint32_t shared_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
  }

  // The Chebyshev update of panel c's 32 elements of x from Y's panel (y), x_prev and q in shared memory; the
  // current x goes to x_prev's place. Four operations an element (three fused multiply-adds with the row's
  // factors times w formed once), where the two-group form takes torch's lerp and two more: the H100 ran the
  // forward 8% faster so (kernels/README.md, gka_solve v11).
  __device__ __forceinline__ void update(const OneGroupOperands& ops, int c, const float (&y)[32], int iteration,
                                         float w_iter) {
    const int thread = threadIdx.x % 128;
    // x_new = w eta q + (1 - w) x_prev + w keep x - w eta y (x_prev = 0 at the first iteration: zeros, and its
    // weight too).
    const float w_before = iteration ? 1.0f - w_iter : 0.0f;
    float w_eta[2], w_keep[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      w_eta[r] = w_iter * rows[r].eta;
      w_keep[r] = w_iter * rows[r].keep;
    }
#pragma unroll
    for (int v = 0; v < 8; ++v) {
      const int e0 = 32 * c + 4 * v;
      const float4 before4 = ops.x_prev[(8 * c + v) * 128 + thread];
      const uint4 q4 = ops.q[(e0 / 8) * 128 + thread];
      const uint32_t q_pairs[2] = {(e0 / 4) % 2 ? q4.z : q4.x, (e0 / 4) % 2 ? q4.w : q4.y};
      const float before[4] = {before4.x, before4.y, before4.z, before4.w};
      float out[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = e0 + i, r = (e / 2) % 2;
        const float2 q2 = bf16_tiles::bf16_pair_values(q_pairs[i / 2]);
        out[i] = fmaf(w_eta[r], i % 2 ? q2.y : q2.x,
                      fmaf(w_before, before[i], fmaf(w_keep[r], x[e], -w_eta[r] * y[4 * v + i])));
      }
      ops.x_prev[(8 * c + v) * 128 + thread] = make_float4(x[e0], x[e0 + 1], x[e0 + 2], x[e0 + 3]);
#pragma unroll
      for (int i = 0; i < 4; ++i) x[e0 + i] = out[i];
    }
  }

  __device__ __forceinline__ void step(const OneGroupOperands& ops, const WgmmaDescriptors<kD>& panel0,
                                       const WgmmaDescriptors<kD>& panel1, float (&p)[32], float (&y0)[32],
                                       float (&y1)[32], int iteration, float w_iter) {
    using namespace wgmma;
    const int thread = threadIdx.x % 128;
    // P = x_lo K^T + x_hi K^T: depth step s is x's columns 16 s .. 16 s + 15, elements 8 s .. 8 s + 7.
    uint32_t hi[8][4], lo[8][4];
    bf16_tiles::split_fragments(x, hi, lo);
    fence();
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const uint64_t b = panel0.keys_by_depth(s);
      mma_rs<false>(p, lo[s], b, s > 0);
      mma_rs<false>(p, hi[s], b, true);
    }
    commit();
    // While they run: X H_0's left operand, bf16(e^{G} o x); register r of a step holds row 8 (r % 2) of the
    // thread's pair of rows.
    uint32_t scaled[8][4];
#pragma unroll
    for (int s = 0; s < 8; ++s) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float decay = rows[r % 2].decay;
        scaled[s][r] = bf16_pair(decay * x[8 * s + 2 * r], decay * x[8 * s + 2 * r + 1]);
      }
    }
    wait<0>();
    fence_operands(p);
    uint32_t pk[4][4];
#pragma unroll
    for (int v = 0; v < 8; ++v) {
      const float4 w = ops.weights[v * 128 + thread];
      p[4 * v] *= w.x;
      p[4 * v + 1] *= w.y;
      p[4 * v + 2] *= w.z;
      p[4 * v + 3] *= w.w;
    }
#pragma unroll
    for (int s = 0; s < 4; ++s) {
#pragma unroll
      for (int r = 0; r < 4; ++r) pk[s][r] = bf16_pair(p[8 * s + 2 * r], p[8 * s + 2 * r + 1]);
    }
    // Y's panels: Y_c = X_s H_0[:, 64 c ..] + P K[:, 64 c ..], each its own batch.
    fence();
#pragma unroll
    for (int s = 0; s < 8; ++s) mma_rs<true>(y0, scaled[s], panel0.h0_by_depth(s), s > 0);
#pragma unroll
    for (int s = 0; s < 4; ++s) mma_rs<true>(y0, pk[s], panel0.keys_by_row(s), true);
    commit();
#pragma unroll
    for (int s = 0; s < 8; ++s) mma_rs<true>(y1, scaled[s], panel1.h0_by_depth(s), s > 0);
#pragma unroll
    for (int s = 0; s < 4; ++s) mma_rs<true>(y1, pk[s], panel1.keys_by_row(s), true);
    commit();
    wait<1>();
    fence_operands(y0);
    update(ops, 0, y0, iteration, w_iter);
    wait<0>();
    fence_operands(y1);
    update(ops, 1, y1, iteration, w_iter);
  }
};

}  // namespace prime::kernels::detail::gka_bf16
