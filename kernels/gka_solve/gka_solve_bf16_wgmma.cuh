// GKA's chunked Chebyshev solve in gka_solve_bf16.cuh's bf16 form on Hopper's warpgroup MMAs
// (kernels/common/wgmma.cuh; the fused bf16 forward, gka_forward_bf16_kernels.cu, at D = 64 and 128:
// the default on Hopper, PRIME_GKA_FORWARD_ITERATE=wgmma).
//
// The register form (gka_solve_bf16_registers.cuh) issues ~1,000 instructions per warp and
// iteration for 124 mma.sync: its MMAs, their ldmatrix loads and the split stores of X wait on one
// another, and the tensor pipe stays ~30% busy. Here one wgmma instruction does the work of 32
// mma.sync and reads B from shared memory itself, and the iterate never goes to shared memory
// as a product's left operand: a position's solve touches only its own row, so the warpgroup that
// holds rows 0..63 in the accumulator layout turns its fp32 x into the A fragments of X K^T in
// registers.
//
// D / 64 warpgroups per chunk (two at D = 128, one at D = 64), group c holding columns 64 c ..
// 64 c + 63 of x and x_prev for all 64 rows (fp32 registers), and W at its elements of the 64 x 64 P;
// eta q at the same elements waits in shared memory (fp32, read back by each update: the registers
// it would take, and the bf16 unpacking and product a bf16 copy of q in registers would cost at every
// update, are what the loop is short of). Per iteration:
//   barrier (every group has read what this iteration overwrites);
//   P_c = x_lo K_c^T + x_hi K_c^T over its columns issued (the split iterate in registers, K by
//   descriptor: the bf16 form's two MMAs per step, lo first); while they run, X_sw = bf16(e^{G} o x)
//   on its columns (shared, swizzled: X H_0's left operand); with two groups P_c into the exchange;
//   barrier; Y = X_sw H_0[:, c] issued (H_0 read as stored, by descriptor); while it runs, with two
//   groups P = P_0 + P_1 (the same sum in both), and P o W rounded to bf16 in registers; Y += P K[:, c];
//   the Chebyshev update of its columns, as the other forms do it.
// Each MMA batch overlaps the ALU work that does not depend on it, in one warpgroup: at D = 128 the
// block's two groups meet at both barriers, so they cannot cover each other's ALU work.
// The same products as the bf16 form, one difference: e^{G_t} scales x's row before its rounding to
// bf16 for X H_0 instead of X H_0's row after it (the same rounding error relative to the row).
// The MMAs add in their own order, so the result is the bf16 form's within its rounding, not bit for
// bit.
#pragma once

#include "kernels/common/ldmatrix.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/gka_solve/gka_solve_bf16.cuh"
#include "kernels/gka_solve/gka_solve_wgmma_descriptors.h"

namespace prime::kernels::detail::gka_bf16 {

using wgmma::accumulator_col;
using wgmma::accumulator_row;

// The block's warps: a warpgroup per 64 columns of the iterate.
template <int D>
constexpr int wgmma_warps() {
  return 4 * (D / 64);
}

// The solve's shared operands: K [64, D] and H_0 [D, D] (as stored: row-major), X_sw [64, D], each in
// wgmma_layout.h's swizzled layout at a 1024-byte aligned base; the exchange (D = 128): [2][8][128]
// float4, group c's partial X K^T at [c], thread i's elements 4 v .. 4 v + 3 at [c][v][i]; eta q,
// [D / 64][8][128] float4 in the same arrangement (16-byte aligned).
struct WgmmaOperands {
  unsigned char* keys;
  unsigned char* h0;
  unsigned char* scaled;
  float* exchange;
  float4* scaled_q;
};
constexpr int kExchangeFloats = 2 * 64 * 64;
template <int D>
constexpr int scaled_q_bytes() {
  return (D / 64) * 8 * 128 * 16;
}

using wgmma::align_1024;

// Copies a row-major bf16 [Rows][Cols] matrix (shared, row stride ld elements, 16-byte aligned rows)
// into the swizzled layout at dst, 16 bytes per thread and step; the block's Threads threads.
template <int Rows, int Cols, int Threads>
__device__ __forceinline__ void copy_to_swizzled(unsigned char* dst, const Bf16* src, int ld) {
  for (int i = threadIdx.x; i < Rows * Cols / 8; i += Threads) {
    const int row = i / (Cols / 8), col = 8 * (i % (Cols / 8));
    *reinterpret_cast<uint4*>(dst + wgmma::sw128_offset(row, col, Rows)) =
        *reinterpret_cast<const uint4*>(src + row * ld + col);
  }
}

template <int D>
struct WgmmaSolve {
  static_assert(D == 64 || D == 128, "the warpgroup solve takes D = 64 or 128");
  static constexpr int kGroups = D / 64;
  static constexpr int kColumns = 64;              // columns of x per group
  static constexpr int kAcc = kColumns / 2;        // their accumulator elements per thread
  static constexpr int kOwnSteps = kColumns / 16;  // depth steps of a group's part of X K^T
  static constexpr int kSteps = D / 16;            // of X H_0
  static constexpr int kKeySteps = 4;              // of P K (64 keys)
  int group, col0;
  RowFactors rows[2];  // rows accumulator_row(0) and accumulator_row(2)
  float x[kAcc], x_prev[kAcc];
  float w[32];  // W at the thread's elements of P

  // x = eta q, and eta q into ops.scaled_q (the thread's own elements: it reads them back itself).
  // q_pair(row, col) gives q's (row, col), (row, col + 1) for a row of the chunk (row < chunk);
  // w_at(t, s) W's (t, s) for t, s < chunk; frob and from_start the rows' ||H_t||_F and e^{G_t}.
  template <typename QPair, typename WAt>
  __device__ __forceinline__ void start(const WgmmaOperands& ops, int chunk, const float* frob,
                                        const float* from_start, double ridge_strength, QPair&& q_pair,
                                        WAt&& w_at) {
    // The same in the whole warpgroup: broadcast from lane 0, ptxas knows it is warp-uniform (it spilled
    // more without, when measured: kernels/README.md, gka_solve v7).
    group = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x / 128), 0);
    col0 = kColumns * group;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      rows[i] = RowFactors(frob, from_start, accumulator_row(2 * i), chunk, ridge_strength);
    float4* scaled_q = ops.scaled_q + group * (kAcc / 4) * 128 + threadIdx.x % 128;
#pragma unroll
    for (int e = 0; e < kAcc; e += 2) {
      const int row = accumulator_row(e);
      const float2 value = row < chunk ? q_pair(row, col0 + accumulator_col(e)) : make_float2(0.0f, 0.0f);
      const float eta = rows[(e / 2) % 2].eta;
      x[e] = eta * value.x;
      x[e + 1] = eta * value.y;
      x_prev[e] = x_prev[e + 1] = 0.0f;
      if (e % 4 == 2) scaled_q[(e / 4) * 128] = make_float4(x[e - 2], x[e - 1], x[e], x[e + 1]);
    }
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      const int t = accumulator_row(e), u = accumulator_col(e);
      w[e] = t < chunk && u < chunk ? w_at(t, u) : 0.0f;
    }
  }

  // The N iterations (all the block's threads; the operands written and fenced for the async proxy
  // before, the first barrier here). After them x holds the solve's result; the caller takes a
  // barrier before reusing the operands' shared memory (the other group may still be reading it).
  // Iterations go in pairs with x and x_prev trading places (the new iterate overwrites the one
  // before the current: no copies).
  __device__ __forceinline__ void run(const WgmmaOperands& ops, double ridge_strength, int num_iter) {
    ChebyshevOmegas omegas(ridge_strength);
    const WgmmaDescriptors<D> desc(shared_address(ops.keys), shared_address(ops.scaled), shared_address(ops.h0), col0);
    float p[32], y[kAcc];
#pragma unroll
    for (int e = 0; e < 32; ++e) p[e] = 0.0f;
#pragma unroll
    for (int e = 0; e < kAcc; ++e) y[e] = 0.0f;
    int iteration = 0;
    for (; iteration + 1 < num_iter; iteration += 2) {
      step(ops, desc, x, x_prev, p, y, iteration, static_cast<float>(omegas.next()));
      step(ops, desc, x_prev, x, p, y, iteration + 1, static_cast<float>(omegas.next()));
    }
    if (iteration < num_iter) {
      step(ops, desc, x, x_prev, p, y, iteration, static_cast<float>(omegas.next()));
#pragma unroll
      for (int e = 0; e < kAcc; ++e) x[e] = x_prev[e];
    }
  }

  // One iteration from the current iterate `cur` and the one before, `before`, which the new iterate
  // replaces; w_iter the iteration's momentum weight.
  __device__ __forceinline__ void step(const WgmmaOperands& ops, const WgmmaDescriptors<D>& desc,
                                       const float (&cur)[kAcc], float (&before)[kAcc], float (&p)[32],
                                       float (&y)[kAcc], int iteration, float w_iter) {
    using namespace wgmma;
    const int thread = threadIdx.x % 128, g = (threadIdx.x % 32) / 4;
    __syncthreads();  // every group is past the previous iteration's MMAs and exchange reads
    // P_c = x_lo K_c^T + x_hi K_c^T: depth step s is x's columns 16 s .. 16 s + 15 of this group,
    // accumulator tiles 2 s and 2 s + 1.
    uint32_t hi[kOwnSteps][4], lo[kOwnSteps][4];
    bf16_tiles::split_fragments(cur, hi, lo);
    fence();
#pragma unroll
    for (int s = 0; s < kOwnSteps; ++s) {
      const uint64_t b = desc.keys_by_depth(s);
      mma_rs<false>(p, lo[s], b, s > 0);
      mma_rs<false>(p, hi[s], b, true);
    }
    commit();
    // While they run (they read hi, lo and the keys): X_sw = bf16(e^{G} o x) on this group's columns,
    // the thread's rows r and r + 8 (r % 8 = g), its 4 bytes of the row's 16-byte chunk c stored at
    // chunk c ^ g (wgmma_layout.h).
    const uint32_t row_at = sw128_start(accumulator_row(0), col0 - col0 % 64, 64) + 4 * (threadIdx.x % 4);
#pragma unroll
    for (int j = 0; j < kAcc / 4; ++j) {
      const uint32_t offset = row_at + (((col0 % 64 / 8 + j) ^ g) << 4);
      const uint32_t upper = bf16_pair(rows[0].decay * cur[4 * j], rows[0].decay * cur[4 * j + 1]);
      const uint32_t lower = bf16_pair(rows[1].decay * cur[4 * j + 2], rows[1].decay * cur[4 * j + 3]);
      *reinterpret_cast<uint32_t*>(ops.scaled + offset) = upper;
      *reinterpret_cast<uint32_t*>(ops.scaled + offset + 8 * 128) = lower;
    }
    fence_proxy_async();  // this block's X_sw stores seen by its MMAs (the barrier below follows)
    wait<0>();
    fence_operands(p);
    if constexpr (kGroups == 2) {
      float4* mine = reinterpret_cast<float4*>(ops.exchange) + group * 8 * 128;
#pragma unroll
      for (int v = 0; v < 8; ++v)
        mine[v * 128 + thread] = make_float4(p[4 * v], p[4 * v + 1], p[4 * v + 2], p[4 * v + 3]);
    }
    __syncthreads();  // every group's partial product and columns of X_sw are in place
    // Y = X_sw H_0[:, c]: B[k][n] = H_0[k][col0 + n], H_0's rows k .. k + 15 from column col0. Issued
    // first: the partial products' sum and P's rounding run beside it.
    fence();  // the update read y
#pragma unroll
    for (int s = 0; s < kSteps; ++s) mma_ss<true>(y, desc.scaled_by_depth(s), desc.h0_by_depth(s), s > 0);
    commit();
    if constexpr (kGroups == 2) {
      const float4* other = reinterpret_cast<const float4*>(ops.exchange) + (1 - group) * 8 * 128;
#pragma unroll
      for (int v = 0; v < 8; ++v) {
        const float4 o = other[v * 128 + thread];
        p[4 * v] += o.x;
        p[4 * v + 1] += o.y;
        p[4 * v + 2] += o.z;
        p[4 * v + 3] += o.w;
      }
    }
    uint32_t pk[kKeySteps][4];
#pragma unroll
    for (int e = 0; e < 32; ++e) p[e] *= w[e];
#pragma unroll
    for (int s = 0; s < kKeySteps; ++s) {
#pragma unroll
      for (int r = 0; r < 4; ++r) pk[s][r] = bf16_pair(p[8 * s + 2 * r], p[8 * s + 2 * r + 1]);
    }
    fence();  // pk written
    // Y += P K[:, c]: B[j][n] = K[j][col0 + n], keys 16 s .. 16 s + 15.
#pragma unroll
    for (int s = 0; s < kKeySteps; ++s) mma_rs<true>(y, pk[s], desc.keys_by_row(s), true);
    commit();
    wait<0>();
    fence_operands(y);
    const float4* scaled_q = ops.scaled_q + group * (kAcc / 4) * 128 + thread;
#pragma unroll
    for (int v = 0; v < kAcc / 4; ++v) {
      const float4 four = scaled_q[v * 128];
      const float eta_q4[4] = {four.x, four.y, four.z, four.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int e = 4 * v + i;
        const RowFactors& f = rows[(e / 2) % 2];
        const float eta_q = eta_q4[i];
        // torch's lerp for weights >= 0.5: end - (end - start) (1 - weight).
        const float base = iteration ? eta_q - (eta_q - before[e]) * (1.0f - w_iter) : eta_q * w_iter;
        before[e] = base + f.keep * w_iter * cur[e] - f.eta * w_iter * y[e];
      }
    }
  }
};

}  // namespace prime::kernels::detail::gka_bf16
