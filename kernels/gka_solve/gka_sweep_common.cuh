// The parts of GKA's reverse sweep that the sweep kernel (gka_solve_backward_mma_kernels.cu: every
// gradient on chip) and the adjoint recurrence kernel (gka_adjoint_mma_kernels.cu: the adjoints alone)
// share, so that both run the recurrence with the same operations in the same order: the chunk's
// operands loaded into shared memory, the adjoint's operator HU = e s (A H_0) + P1 K with its row sums,
// the adjoint update, the rows' sums and the epilogue (dq, d e^G, d f). One block of 512 threads per
// chunk; a warp owns one 16 x 32 block of the adjoint (rows rb*16.., columns c0..) in the m16n8
// accumulator layout (gka_mma_fragments.cuh).
#pragma once

#include <cstddef>

#include "kernels/gka_solve/gka_chebyshev.cuh"
#include "kernels/gka_solve/gka_mma_fragments.cuh"

namespace prime::kernels::detail::gka_sweep {

constexpr int kThreads = 512;
constexpr int kTiles = 4;      // n8 tiles of a warp's 16 x 32 block
constexpr int kMaxGroups = 4;  // 32-column groups of a row (D <= 128): the partial row sums

// Sum over the four lanes of a row quad (lanes 4g..4g+3): the accumulator layout's row sum.
__device__ __forceinline__ float quad_sum(float value) {
  value += __shfl_xor_sync(0xffffffffu, value, 1);
  value += __shfl_xor_sync(0xffffffffu, value, 2);
  return value;
}

// A warp's partial sums of its rows row_a and row_b (over its 32 columns) into parts[row][group].
__device__ __forceinline__ void store_row_sums(float* parts, int row_a, int row_b, int group, float sum_a,
                                               float sum_b) {
  sum_a = quad_sum(sum_a);
  sum_b = quad_sum(sum_b);
  if ((threadIdx.x & 3) == 0) {
    parts[row_a * kMaxGroups + group] = sum_a;
    parts[row_b * kMaxGroups + group] = sum_b;
  }
}

constexpr int kPad = 4;        // row padding in floats (ldmatrix rows on distinct banks)

// Offsets in floats of one chunk's operands in shared memory: K, H_0^T, the adjoint A and y_i
// [Cp][ld_x]; P1 (and, for the sweep kernel's gradients, P2) [Cp][ld_t]; per row eta, kappa, e^G,
// d e^G and hy = sum_i (H U_i) . y_i; the partial row sums [Cp][kMaxGroups] twice; W [Cp][ld_t]
// (zero-padded); omega_1..omega_N as doubles (the offset is even: 8-byte aligned).
struct SweepLayout {
  int ld_x, ld_t;  // row strides of the [Cp, D] / [D, D] buffers and of the [Cp, Cp] ones
  int k, ht, a, y, p1, p2, rows, parts, w, omegas, floats;

  __host__ __device__ SweepLayout(int padded_chunk, int d, int num_iter, bool with_p2) {
    ld_x = d + kPad;
    ld_t = padded_chunk + kPad;
    k = 0;
    ht = k + padded_chunk * ld_x;  // H_0^T: B^T of A H_0
    a = ht + d * ld_x;
    y = a + padded_chunk * ld_x;
    p1 = y + padded_chunk * ld_x;
    p2 = p1 + padded_chunk * ld_t;
    rows = p2 + (with_p2 ? padded_chunk * ld_t : 0);
    parts = rows + 5 * padded_chunk;
    w = parts + 2 * padded_chunk * kMaxGroups;
    omegas = w + padded_chunk * ld_t;
    floats = omegas + 2 * num_iter;
  }
};

// Those operands as pointers, with the chunk's shape.
struct Sweep {
  float *K, *Ht, *Adj, *Y, *P1, *Ws;
  float *eta, *kappa, *decay, *g_decay, *hy, *part_decay, *part_hy;
  double* omegas;
  int ld_x, ld_t, Cp, chunk, dim;

  __device__ Sweep(float* smem, const SweepLayout& L, int padded_chunk, int chunk_rows, int d)
      : K(smem + L.k), Ht(smem + L.ht), Adj(smem + L.a), Y(smem + L.y), P1(smem + L.p1), Ws(smem + L.w),
        eta(smem + L.rows), kappa(eta + padded_chunk), decay(kappa + padded_chunk), g_decay(decay + padded_chunk),
        hy(g_decay + padded_chunk), part_decay(smem + L.parts), part_hy(part_decay + padded_chunk * kMaxGroups),
        omegas(reinterpret_cast<double*>(smem + L.omegas)), ld_x(L.ld_x), ld_t(L.ld_t), Cp(padded_chunk),
        chunk(chunk_rows), dim(d) {}
};

// The operands of chunk m: row factors (zero on padding rows, which then stay zero), the omegas (in
// double, as ChunkSolve::backward forms them), W zero-padded, H_0^T, K, A = grad (the adjoint of
// y_{N+1}, the output) and y_N. The caller's barrier follows.
__device__ __forceinline__ void load_operands(const Sweep& s, long long m, const float* keys, const float* start,
                                              const float* weights, const float* from_start, const float* frob,
                                              const float* iterates, const float* grad, double ridge_strength,
                                              int num_iter, const gka::IterateSteps& steps) {
  const int tid = threadIdx.x, Cp = s.Cp, chunk = s.chunk, dim = s.dim;
  const size_t cd = static_cast<size_t>(chunk) * dim;
  for (int t = tid; t < Cp; t += kThreads) {
    const gka::RowFactors f(frob + m * chunk, from_start + m * chunk, t, chunk, ridge_strength);
    s.eta[t] = f.eta;
    s.kappa[t] = f.keep;
    s.decay[t] = f.decay;
    s.g_decay[t] = 0.0f;
    s.hy[t] = 0.0f;
  }
  if (tid == 0) {
    gka::ChebyshevOmegas sequence(ridge_strength);
    for (int k = 0; k < num_iter; ++k) s.omegas[k] = sequence.next();
  }
  for (int i = tid; i < Cp * Cp; i += kThreads) {
    const int t = i / Cp, u = i % Cp;
    s.Ws[t * s.ld_t + u] = t < chunk && u < chunk ? weights[(m * chunk + t) * chunk + u] : 0.0f;
  }
  for (int i = tid; i < dim * dim; i += kThreads) s.Ht[(i % dim) * s.ld_x + i / dim] = start[m * dim * dim + i];
  const float* y_last = iterates + steps.offset(num_iter - 1, m, cd);
  for (int i = tid; i < Cp * dim; i += kThreads) {
    const int r = i / dim, c = i % dim;
    const bool in = r < chunk;
    s.K[r * s.ld_x + c] = in ? keys[m * cd + i] : 0.0f;
    s.Adj[r * s.ld_x + c] = in ? grad[m * cd + i] : 0.0f;
    s.Y[r * s.ld_x + c] = in ? y_last[i] : 0.0f;
  }
}

// hu (zero on entry) = HU = e s (A H_0) + P1 K on this warp's block, s = eta (-omega) per row, with the
// partial row sums of s (A H_0) o y_i into part_decay. P1 = W o (s A K^T) is complete (a barrier
// before); its columns past this row block's diagonal block are zero. kBf16: the products' steps on
// bf16x3 (gka_mma_fragments.cuh) instead of 3xTF32.
template <bool kBf16 = false>
__device__ __forceinline__ void adjoint_operator(float (&hu)[kTiles][4], const Sweep& s, float minus_omega, int rb,
                                                 int c0, int group, int lane) {
  const int row_a = rb * 16 + (lane >> 2), row_b = row_a + 8, t4 = lane & 3;
  gka_mma::warp_product<kTiles / 2, true, kBf16>(hu, s.Adj, s.ld_x, rb * 16, s.Ht, s.ld_x, c0, s.dim, lane);
  const float scale_a = s.eta[row_a] * minus_omega, scale_b = s.eta[row_b] * minus_omega;
  const float e_a = s.decay[row_a], e_b = s.decay[row_b];
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int d = c0 + 8 * j + 2 * t4;
    const float2 ya = *reinterpret_cast<const float2*>(s.Y + row_a * s.ld_x + d);
    const float2 yb = *reinterpret_cast<const float2*>(s.Y + row_b * s.ld_x + d);
    const float y[4] = {ya.x, ya.y, yb.x, yb.y};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float uh0 = hu[j][e] * (e < 2 ? scale_a : scale_b);
      (e < 2 ? sum_a : sum_b) += uh0 * y[e];
      hu[j][e] = (e < 2 ? e_a : e_b) * uh0;
    }
  }
  store_row_sums(s.part_decay, row_a, row_b, group, sum_a, sum_b);
  gka_mma::warp_product_rows<kTiles, true, kBf16>(hu, s.P1, s.ld_t, rb * 16, s.K, s.ld_x, c0, 16 * (rb + 1), lane);
}

// The adjoint update on this warp's block: hu (HU) becomes A_i = HU + kappa omega_i A_{i+1} + carry and
// carry (1 - omega_i) A_{i+1}, with the partial row sums of HU o y_i into part_hy. visit(j, half, t, d,
// a) sees each pair of A_{i+1}'s elements (row t, columns d, d + 1; a float2) as it is read.
template <class Visit>
__device__ __forceinline__ void adjoint_update(float (&hu)[kTiles][4], float (&carry)[kTiles][4], const Sweep& s,
                                               double omega, int rb, int c0, int group, int lane,
                                               const Visit& visit) {
  const int row_a = rb * 16 + (lane >> 2), row_b = row_a + 8, t4 = lane & 3;
  const float omega_f = static_cast<float>(omega);
  const float kappa_a = s.kappa[row_a] * omega_f, kappa_b = s.kappa[row_b] * omega_f;
  const float one_minus_omega = static_cast<float>(1.0 - omega);
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int d = c0 + 8 * j + 2 * t4;
    const float2 ya = *reinterpret_cast<const float2*>(s.Y + row_a * s.ld_x + d);
    const float2 yb = *reinterpret_cast<const float2*>(s.Y + row_b * s.ld_x + d);
    const float2 aa = *reinterpret_cast<const float2*>(s.Adj + row_a * s.ld_x + d);
    const float2 ab = *reinterpret_cast<const float2*>(s.Adj + row_b * s.ld_x + d);
    const float y[4] = {ya.x, ya.y, yb.x, yb.y}, adjoint[4] = {aa.x, aa.y, ab.x, ab.y};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      (e < 2 ? sum_a : sum_b) += hu[j][e] * y[e];
      // A_i = HU + kappa omega_i A_{i+1} + (1 - omega_{i+1}) A_{i+2}; hu becomes A_i.
      hu[j][e] = carry[j][e] + (hu[j][e] + (e < 2 ? kappa_a : kappa_b) * adjoint[e]);
      carry[j][e] = adjoint[e] * one_minus_omega;
    }
    visit(j, 0, row_a, d, aa);
    visit(j, 1, row_b, d, ab);
  }
  store_row_sums(s.part_hy, row_a, row_b, group, sum_a, sum_b);
}

// Threads tid < Cp: this iteration's parts added to the row's d e^G and hy, in a fixed order.
__device__ __forceinline__ void sum_rows(const Sweep& s, int groups) {
  const int tid = threadIdx.x;
  if (tid >= s.Cp) return;
  float sum_decay = 0.0f, sum_hy = 0.0f;
  for (int gi = 0; gi < groups; ++gi) {
    sum_decay += s.part_decay[tid * kMaxGroups + gi];
    sum_hy += s.part_hy[tid * kMaxGroups + gi];
  }
  s.g_decay[tid] += sum_decay;
  s.hy[tid] += sum_hy;
}

// The end of the sweep, A being the adjoint of y_1 = eta q, part one (owners, on their block):
// dq = eta (q_coeff + A_1) in q_coeff's own elements, and the partial row sums of (q_coeff + A_1) o q
// into part_decay. A barrier, then finish_rows.
__device__ __forceinline__ void finish_q(const Sweep& s, float* q_coeff, const float* q_chunk, int rb, int c0,
                                         int group, int lane) {
  const int row_a = rb * 16 + (lane >> 2), row_b = row_a + 8, t4 = lane & 3, dim = s.dim;
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int d = c0 + 8 * j + 2 * t4;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int t = e < 2 ? row_a : row_b, col = d + (e & 1);
      if (t >= s.chunk) continue;
      const float coeff = q_coeff[t * dim + col] + s.Adj[t * s.ld_x + col];
      (e < 2 ? sum_a : sum_b) += coeff * q_chunk[t * dim + col];
      q_coeff[t * dim + col] = s.eta[t] * coeff;
    }
  }
  store_row_sums(s.part_decay, row_a, row_b, group, sum_a, sum_b);
}

// Part two (threads tid < chunk): d eta = rowsum((q_coeff + A_1) o q) + hy / eta, d f = d eta (-eta / f)
// (d eta / d f = -eta / f), and d e^G.
__device__ __forceinline__ void finish_rows(const Sweep& s, int groups, long long m, const float* frob,
                                            float* d_frob, float* d_from_start) {
  const int tid = threadIdx.x, chunk = s.chunk;
  if (tid >= chunk) return;
  float part = 0.0f;
  for (int gi = 0; gi < groups; ++gi) part += s.part_decay[tid * kMaxGroups + gi];
  const float d_eta = part + s.hy[tid] / s.eta[tid];
  d_frob[m * chunk + tid] = d_eta * (-s.eta[tid] / frob[m * chunk + tid]);
  d_from_start[m * chunk + tid] = s.g_decay[tid];
}

}  // namespace prime::kernels::detail::gka_sweep
