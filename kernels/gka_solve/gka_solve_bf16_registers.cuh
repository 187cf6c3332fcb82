// GKA's chunked Chebyshev solve in gka_solve_bf16.cuh's bf16 form with the iterate in registers
// (the fused bf16 forward, gka_forward_bf16_kernels.cu, at D = 64 and 128).
//
// gka_solve_bf16.cuh gives each of 16 warps a 16 x 32 block of the iterate and keeps the fp32
// iterate in shared memory: every iteration reads X and H_0 four times over through ldmatrix and
// the iterate twice more (ncu at (4,8192,32,128): L1/shared 79% busy, ~4,400 wavefronts per
// iteration and chunk, the tensor pipe 29%). Here 2 (D / 32) warps (8 at D = 128, up to 255
// registers each) own 32 x 32 blocks: x, x_prev and eta q live in registers for the whole solve,
// X H_0 and P K load each B fragment once for two row tiles, and P's lower tiles go out as six
// items (a 16 x 32 pair of tiles loads its X rows once): ~2,400 wavefronts per iteration. Same
// products, same order of operations per element as the 16-warp form (the X H_0 and P K sums step
// through the depth in the same order), two barriers per iteration as there.
// Measured: the same output bit for bit; shared memory 56% busy instead of 79%, but only 1.035x
// faster at D = 128 (1.16x at D = 64): both forms issue at the rate their dependency chains allow
// (kernels/README.md, gka_solve v6).
#pragma once

#include "kernels/gka_solve/gka_solve_bf16.cuh"

namespace prime::kernels::detail::gka_bf16 {

// Warps of the register form for head dim D (64-step chunks): 32-row blocks times 32-column groups.
template <int D>
constexpr int register_warps() {
  return 2 * (D / 32);
}

// P's lower 16 x 16 tiles (row block pr, column blocks pc0 .. pc0 + tiles - 1) in six items of one
// or two tiles, the longest first; warp w takes items w, w + warps, ...
struct PItem {
  int pr, pc0, tiles;
};
constexpr int kPItems = 6;
__device__ __forceinline__ PItem p_item(int i) {
  // Item i's fields in hex digit i (a table in registers, not a local array): pr 3 3 2 1 2 0, pc0
  // 0 2 0 0 2 0, tiles 2 2 2 2 1 1.
  const auto digit = [i](unsigned packed) { return static_cast<int>((packed >> (4 * i)) & 0xFu); };
  return {digit(0x021233u), digit(0x020020u), digit(0x112222u)};
}

// acc[m][t] += A[16 m : +16, 0 : depth_m] B[0 : depth_m, col0 + 16 t : +16] for m, t < 2, one bf16
// MMA per step, each B fragment loaded once for both row tiles: a at A's first row (row stride
// lda), b row-major (ldb); depth_0 = depth - 16 where ShortFirst (P K: the first row tile's
// columns end one block earlier), else depth.
template <bool ShortFirst>
__device__ __forceinline__ void two_row_tiles_product(Acc (&acc)[2][2], const Bf16* a, int lda, int depth,
                                                      const Bf16* b, int ldb, int col0) {
#pragma unroll 2
  for (int k0 = 0; k0 < depth; k0 += 16) {
    FragB b0, b1;
    load_b(b0, b + k0 * ldb + col0, ldb);
    load_b(b1, b + k0 * ldb + col0 + 16, ldb);
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      if (ShortFirst && m == 0 && k0 + 16 >= depth) continue;
      FragA fa;
      load_a(fa, a + 16 * m * lda + k0, lda);
      mma(acc[m][0], fa, b0);
      mma(acc[m][1], fa, b1);
    }
  }
}

// Calls f(m, t, e, row, col) for the lane's pairs of the 32 x 32 block at (row0, col0): elements e
// and e + 1 of tile (m, t) at (row, col) and (row, col + 1).
template <typename F>
__device__ __forceinline__ void for_each_register_pair(int row0, int col0, F&& f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int e = 0; e < 8; e += 2)
        f(m, t, e, row0 + 16 * m + g + 8 * ((e / 2) % 2), col0 + 16 * t + 8 * (e / 4) + 2 * t4);
    }
  }
}

// A warp's part of the register form: its 32 x 32 block of the iterate (rows row0.., columns
// col0..), the factors of its four rows (rows[2 m + i]: row row0 + 16 m + g + 8 i), x, x_prev and
// q (bf16 pairs, exact; the compiler hoists eta q out of the loop into fp32 registers anyway) in the
// accumulator layout of the block's tiles, and W's tiles of its P items.
template <int D>
struct RegisterSolve {
  static constexpr int kWarps = register_warps<D>();
  static constexpr int kItems = (kPItems + kWarps - 1) / kWarps;
  int row0, col0, warp;
  RowFactors rows[4];
  Acc x[2][2], x_prev[2][2];
  uint32_t q[2][2][4];  // bf16 pairs: q[m][t][e / 2] holds elements e, e + 1
  Acc w[kItems][2];

  __device__ int item(int i) const { return warp + i * kWarps; }

  // x = eta q. q_pair(row, col) gives q's (row, col), (row, col + 1) for a row of the chunk (row <
  // chunk); w_at(t, s) W's (t, s) for t, s < chunk; frob and from_start the rows' ||H_t||_F and
  // e^{G_t}. Writes X's hi and lo parts; the barrier before they are read is run_register_solve's.
  template <typename QPair, typename WAt>
  __device__ __forceinline__ void start(const Shared& s, int chunk, const float* frob, const float* from_start,
                                        double ridge_strength, QPair&& q_pair, WAt&& w_at) {
    warp = threadIdx.x / 32;
    row0 = 32 * (warp / (D / 32));
    col0 = 32 * (warp % (D / 32));
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) rows[i] = RowFactors(frob, from_start, row0 + 16 * (i / 2) + g + 8 * (i % 2), chunk,
                                                     ridge_strength);
    for_each_register_pair(row0, col0, [&](int m, int t, int e, int row, int col) {
      const float eta = rows[2 * m + (e / 2) % 2].eta;
      const float2 value = row < chunk ? q_pair(row, col) : make_float2(0.0f, 0.0f);
      q[m][t][e / 2] = bf16_pair(value.x, value.y);  // exact: q is bf16
      x[m][t].x[e] = eta * value.x;
      x[m][t].x[e + 1] = eta * value.y;
      x_prev[m][t].x[e] = x_prev[m][t].x[e + 1] = 0.0f;
      store_split<true>(s.X, row * s.ld_d + col, x[m][t].x[e], x[m][t].x[e + 1]);
    });
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const PItem p = p_item(item(i) < kPItems ? item(i) : 0);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int t = 16 * p.pr + g + 8 * ((e / 2) % 2), u = 16 * (p.pc0 + j) + 8 * (e / 4) + 2 * t4 + e % 2;
          w[i][j].x[e] = item(i) < kPItems && j < p.tiles && t < chunk && u < chunk ? w_at(t, u) : 0.0f;
        }
      }
    }
  }

  // The N iterations; after them x holds the solve's result (the caller's own block: no barrier
  // needed to read it).
  __device__ __forceinline__ void run(const Shared& s, double ridge_strength, int num_iter) {
    const int ld_d = s.ld_d, ld_p = s.ld_p;
    ChebyshevOmegas omegas(ridge_strength);
    for (int iteration = 0; iteration < num_iter; ++iteration) {
      const float w_iter = static_cast<float>(omegas.next());
      __syncthreads();  // X holds this iteration's x; the previous iteration's P is read
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        if (item(i) >= kPItems) continue;
        const PItem p = p_item(item(i));
        Acc tile[2];
        fill(tile[0], 0.0f);
        fill(tile[1], 0.0f);
        if (p.tiles == 2) {
          split_row_block_product<2, 2, /*Transposed=*/true>(tile, s.X, 16 * p.pr * ld_d, ld_d, D, s.K, ld_d,
                                                             16 * p.pc0);
        } else {
          Acc(&one)[1] = *reinterpret_cast<Acc(*)[1]>(&tile[0]);
          split_row_block_product<2, 1, /*Transposed=*/true>(one, s.X, 16 * p.pr * ld_d, ld_d, D, s.K, ld_d,
                                                             16 * p.pc0);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (j >= p.tiles) continue;
          for_each_tile_pair(16 * p.pr, 16 * (p.pc0 + j), [&](int e, int row, int col) {
            store_split<false>(s.P, row * ld_p + col, tile[j].x[e] * w[i][j].x[e], tile[j].x[e + 1] * w[i][j].x[e + 1]);
          });
        }
      }
      Acc y[2][2];
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        fill(y[m][0], 0.0f);
        fill(y[m][1], 0.0f);
      }
      two_row_tiles_product<false>(y, s.X.hi + row0 * ld_d, ld_d, D, s.H.hi, ld_d, col0);
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int t = 0; t < 2; ++t) {
#pragma unroll
          for (int e = 0; e < 8; ++e) y[m][t].x[e] *= rows[2 * m + (e / 2) % 2].decay;
        }
      }
      __syncthreads();  // P complete; nothing reads X again this iteration
      // Y += P K: P's columns past each row tile's diagonal block are zero (and never written).
      two_row_tiles_product<true>(y, s.P.hi + row0 * ld_p, ld_p, row0 + 32, s.K.hi, ld_d, col0);
      for_each_register_pair(row0, col0, [&](int m, int t, int e, int row, int col) {
        const RowFactors& f = rows[2 * m + (e / 2) % 2];
        const float2 q_at = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&q[m][t][e / 2]));
        float next[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int k = e + i;
          const float xk = x[m][t].x[k], eta_q_k = f.eta * (i ? q_at.y : q_at.x);
          // torch's lerp for weights >= 0.5: end - (end - start) (1 - weight).
          const float base = iteration ? eta_q_k - (eta_q_k - x_prev[m][t].x[k]) * (1.0f - w_iter) : eta_q_k * w_iter;
          next[i] = base + f.keep * w_iter * xk - f.eta * w_iter * y[m][t].x[k];
          x_prev[m][t].x[k] = xk;
          x[m][t].x[k] = next[i];
        }
        store_split<true>(s.X, row * ld_d + col, next[0], next[1]);
      });
    }
  }
};

}  // namespace prime::kernels::detail::gka_bf16
