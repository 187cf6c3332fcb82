// GKA's chunked Chebyshev solve on the bf16 tensor cores, the part every such kernel shares
// (gka_solve_bf16_kernels.cu: the solve alone on fp32 operands; gka_forward_bf16_kernels.cu: the
// fused bf16 forward). One block of 16 warps per chunk, D in {32, 64, 96, 128}.
//
// Same iteration, same order of operations as the 3xTF32 kernel (gka_solve_mma_kernels.cu); the
// products X K^T, X H_0 and P K run on mma.sync m16n8k16 with fp32 accumulation
// (bf16_split_tiles.cuh), their operands in shared memory as bf16, in one of two forms (Form):
// kBf16x3 keeps every operand as hi + lo parts and takes three MMAs per step (16-bit significands:
// ~1e-5 of float64 after 30 iterations, inside the fp32 bound, at twice 3xTF32's rate); kBf16Form,
// for bf16 inputs, splits X for X K^T only (two MMAs per step) and takes one MMA per step for X H_0
// and P K on bf16 operands. X K^T is the product whose
// rounding the layer's output feels: with it on one MMA too the output lands at ~5x its
// sensitivity to bf16 inputs, with X split there 2.1-2.5x, with every iterate-side operand split
// 1.7-2.1x for 1.7x the MMAs (experiments/gka_bf16_forward). The iterate, x_prev, eta q, H x and
// the Chebyshev update stay fp32: each warp owns one
// 16 x 32 block of the iterate for the whole solve (eta q, x_prev and H x in its registers, the
// iterate in an fp32 shared array only it touches: registers would spill) and writes the bf16
// parts of each new x to shared memory for the next products.
//
// Shared memory, each as hi (and lo where split): X [Cp, D] (split in both forms), K [Cp, D], H_0
// [D, D], P = W o X K^T [Cp, Cp] (split in kBf16x3), then the fp32 iterate [Cp, D + 8] (131 KB at
// C = 64, D = 128 in kBf16Form; 192 KB in kBf16x3).
// Per iteration, two barriers:
//   warps 0..9: P's lower tile (pr, pc), pc <= pr (the tiles above the diagonal are never read);
//   every owner: Y = e^{G} o X H_0 on its block;
//   barrier; Y += P K over the keys up to its rows' diagonal block; the update; barrier.
#pragma once

#include "kernels/common/bf16_split_tiles.cuh"
#include "kernels/gka_solve/gka_chebyshev.cuh"

namespace prime::kernels::detail::gka_bf16 {

using namespace gka;
using namespace bf16_tiles;

constexpr int kThreads = 512;
constexpr int kTiles = 2;  // 16 x 16 tiles of a warp's block of the iterate: 32 columns

// The solve's forms (Form) and the MMAs per step of each product in them.
constexpr int kBf16Form = 2, kBf16x3 = 3;
template <int Form>
struct FormTerms {
  static_assert(Form == kBf16Form || Form == kBf16x3, "a bf16 solve form");
  static constexpr int xk = Form == kBf16x3 ? 3 : 2;  // X K^T
  static constexpr int xh = Form == kBf16x3 ? 3 : 1;  // X H_0
  static constexpr int pk = Form == kBf16x3 ? 3 : 1;  // P K
};

// Element offsets of the bf16 shared matrices, each one or two parts of `size` elements (hi, then
// lo: X split in both forms, K, H_0 and P in kBf16x3), then the fp32 iterate [Cp][ld_f]; `bytes` in
// all.
struct Layout {
  int x_parts = 2, other_parts = 1, ld_d = 0, ld_p = 0, ld_f = 0;
  int x = 0, k = 0, h = 0, p = 0, elements = 0;
  int x_size = 0, h_size = 0, p_size = 0;
  size_t bytes = 0;

  __host__ __device__ constexpr Layout(int padded_chunk, int d, int form) : other_parts(form == kBf16x3 ? 2 : 1) {
    ld_d = ld_of(d);
    ld_p = ld_of(padded_chunk);
    x_size = padded_chunk * ld_d;
    h_size = d * ld_d;
    p_size = padded_chunk * ld_p;
    x = 0;
    k = x + x_parts * x_size;
    h = k + other_parts * x_size;
    p = h + other_parts * h_size;
    elements = p + other_parts * p_size;  // a multiple of 8: the fp32 iterate starts on 16 bytes
    ld_f = d + 8;                    // a warp's float2 accesses to its 8 x 8 pairs in two wavefronts
    bytes = static_cast<size_t>(elements) * 2 + static_cast<size_t>(padded_chunk) * ld_f * 4;
  }
};

// The solve's shared matrices (from a Layout over the block's shared memory).
struct Shared {
  SplitMatrix X, K, H, P;
  float* Xf;  // the fp32 iterate
  int ld_d, ld_p, ld_f;

  __device__ Shared(unsigned char* base, const Layout& L) : ld_d(L.ld_d), ld_p(L.ld_p), ld_f(L.ld_f) {
    Bf16* smem = reinterpret_cast<Bf16*>(base);
    const auto part = [&](int offset, int size, int parts) {
      return SplitMatrix{smem + offset, parts == 2 ? smem + offset + size : nullptr};
    };
    X = part(L.x, L.x_size, L.x_parts);
    K = part(L.k, L.x_size, L.other_parts);
    H = part(L.h, L.h_size, L.other_parts);
    P = part(L.p, L.p_size, L.other_parts);
    Xf = reinterpret_cast<float*>(smem + L.elements);
  }
};

// What each warp does: `owner` of the iterate's 16 x 32 block at rows 16 rb, columns c0 (every
// element has exactly one owner: (Cp / 16) (D / 32) <= 16 blocks), and `p_owner` of P's lower tile
// (pr, pc), pc <= pr, in order.
struct Roles {
  bool owner, p_owner;
  int rb, c0, pr, pc;

  __device__ Roles(int padded_chunk, int d) : Roles(padded_chunk, d, static_cast<int>(threadIdx.x / 32)) {}
  // The roles of warp `warp` of the 16, played by whichever warp asks (a block of fewer warps).
  __device__ Roles(int padded_chunk, int d, int warp) {
    const int groups = d / 32, row_blocks = padded_chunk / 16;
    owner = warp < row_blocks * groups;
    rb = owner ? warp / groups : 0;
    c0 = owner ? (warp % groups) * 32 : 0;
    p_owner = warp < row_blocks * (row_blocks + 1) / 2;
    pr = 0;
    pc = warp;
    while (pc > pr) pc -= ++pr;
  }
};

// Calls f(j, e, row, col) for the lane's pairs of the 16 x 32 block at (row0, col0): elements e and
// e + 1 of the block's tile j (bf16_tiles' accumulator layout) at (row, col) and (row, col + 1).
template <typename F>
__device__ __forceinline__ void for_each_block_pair(int row0, int col0, F&& f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 8; e += 2) f(j, e, row0 + g + 8 * ((e / 2) % 2), col0 + 16 * j + 8 * (e / 4) + 2 * t);
  }
}

// Calls f(e, row, col) for the lane's pairs of the 16 x 16 tile at (row0, col0).
template <typename F>
__device__ __forceinline__ void for_each_tile_pair(int row0, int col0, F&& f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int e = 0; e < 8; e += 2) f(e, row0 + g + 8 * ((e / 2) % 2), col0 + 8 * (e / 4) + 2 * t);
}

// The solve's per-warp state: the rows' factors (row g and g + 8 of the block), eta q and x_prev in
// the accumulator layout of the block's two tiles, and the warp's W tile (zero if not a p_owner).
struct WarpState {
  RowFactors rows[2];
  Acc eta_q[kTiles], x_prev[kTiles];
  Acc w_tile;
};

// Starts the solve: x = eta q. q_pair(row, col) gives q's (row, col), (row, col + 1) for a row of
// the chunk (row < chunk); w_at(t, s) gives W's (t, s) for t, s < chunk.
template <typename QPair, typename WAt>
__device__ __forceinline__ void start_solve(const Shared& s, const Roles& r, WarpState& state, int chunk,
                                            QPair&& q_pair, WAt&& w_at) {
  for_each_block_pair(16 * r.rb, r.c0, [&](int j, int e, int row, int col) {
    const float eta = state.rows[(e / 2) % 2].eta;
    const float2 value = r.owner && row < chunk ? q_pair(row, col) : make_float2(0.0f, 0.0f);
    state.eta_q[j].x[e] = eta * value.x;
    state.eta_q[j].x[e + 1] = eta * value.y;
    state.x_prev[j].x[e] = state.x_prev[j].x[e + 1] = 0.0f;
    if (!r.owner) return;
    *reinterpret_cast<float2*>(s.Xf + row * s.ld_f + col) = make_float2(state.eta_q[j].x[e], state.eta_q[j].x[e + 1]);
    store_split<true>(s.X, row * s.ld_d + col, state.eta_q[j].x[e], state.eta_q[j].x[e + 1]);
  });
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int t = 16 * r.pr + g + 8 * ((e / 2) % 2), u = 16 * r.pc + 8 * (e / 4) + 2 * t4 + e % 2;
    state.w_tile.x[e] = r.p_owner && t < chunk && u < chunk ? w_at(t, u) : 0.0f;
  }
}

// The N iterations (start_solve first, the keys and H_0 in shared memory, and a barrier before the
// first X is read is taken here). iterate(iteration, row, col, x) receives each owner's pairs of
// the x each iteration starts from (rows < Cp: the caller skips padding rows). After it, each
// owner reads its own block of the final x from s.Xf (no barrier needed).
template <int D, int Form, typename IterateOut>
__device__ __forceinline__ void run_solve(const Shared& s, const Roles& r, WarpState& state, double ridge_strength,
                                          int num_iter, IterateOut&& iterate) {
  const int ld_d = s.ld_d, ld_p = s.ld_p;
  using Terms = FormTerms<Form>;
  ChebyshevOmegas omegas(ridge_strength);
  for (int iteration = 0; iteration < num_iter; ++iteration) {
    const float w = static_cast<float>(omegas.next());
    __syncthreads();  // X holds this iteration's x; the previous iteration's P is read
    if (r.p_owner) {
      Acc p[1];
      fill(p[0], 0.0f);
      split_row_block_product<Terms::xk, 1, /*Transposed=*/true>(p, s.X, 16 * r.pr * ld_d, ld_d, D, s.K, ld_d,
                                                                 16 * r.pc);
      for_each_tile_pair(16 * r.pr, 16 * r.pc, [&](int e, int row, int col) {
        store_split<splits_left<Terms::pk>()>(s.P, row * ld_p + col, p[0].x[e] * state.w_tile.x[e],
                                              p[0].x[e + 1] * state.w_tile.x[e + 1]);
      });
    }
    Acc y[kTiles];
    if (r.owner) {
#pragma unroll
      for (int j = 0; j < kTiles; ++j) fill(y[j], 0.0f);
      split_row_block_product<Terms::xh, kTiles>(y, s.X, 16 * r.rb * ld_d, ld_d, D, s.H, ld_d, r.c0);
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 8; ++e) y[j].x[e] *= state.rows[(e / 2) % 2].decay;
      }
    }
    __syncthreads();  // P complete; nothing reads X again this iteration
    if (!r.owner) continue;
    // Y += P K: P's columns past this row block's diagonal block are zero.
    split_row_block_product<Terms::pk, kTiles>(y, s.P, 16 * r.rb * ld_p, ld_p, 16 * (r.rb + 1), s.K, ld_d, r.c0);
    for_each_block_pair(16 * r.rb, r.c0, [&](int j, int e, int row, int col) {
      const RowFactors& f = state.rows[(e / 2) % 2];
      float2* at = reinterpret_cast<float2*>(s.Xf + row * s.ld_f + col);
      const float2 x = *at;
      iterate(iteration, row, col, x);
      float next[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int k = e + i;
        const float xk = i ? x.y : x.x;
        const float eta_q = state.eta_q[j].x[k];
        // torch's lerp for weights >= 0.5: end - (end - start) (1 - weight).
        const float base = iteration ? eta_q - (eta_q - state.x_prev[j].x[k]) * (1.0f - w) : eta_q * w;
        next[i] = base + f.keep * w * xk - f.eta * w * y[j].x[k];
        state.x_prev[j].x[k] = xk;
      }
      *at = make_float2(next[0], next[1]);
      store_split<true>(s.X, row * ld_d + col, next[0], next[1]);
    });
  }
}

}  // namespace prime::kernels::detail::gka_bf16
