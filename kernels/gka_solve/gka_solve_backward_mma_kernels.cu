// The reverse sweep of GKA's chunked Chebyshev solve for D a multiple of 32, on the raw m16n8k8
// TF32 MMA, or with kBf16 on bf16x3 m16n8k16 steps (gka_mma_fragments.cuh's step layer: the same loads,
// three bf16 MMAs per 16 depths). The math and the order of its operations are those of the
// wmma kernel (gka_solve_backward_kernels.cu, whose comment states them; it serves the other
// shapes): per iteration i = N..1, with A the adjoint of y_{i+1}, s = -omega_i eta per row,
//   UK = s (A K^T), YK = y_i K^T;  dW += UK o YK;  P1 = W o UK;  P2 = s (W o YK)
//   dK += P2^T A + P1^T y_i;  dH_0 += y_i^T (e s A)
//   HU = e s (A H_0) + P1 K;  d e += rowsum(s (A H_0) o y_i);  hy += rowsum(HU o y_i)
//   q_coeff += omega A;  A <- HU + kappa omega A + (1 - omega_{i+1}) A_{i+2}.
// Every product is 3xTF32 (or bf16x3) with each k-step rounded into an fp32 sum (mma3_rounded_step), as
// the wmma kernel since v3.1.
//
// What changes is where things live. dH_0 [D, D] stays in registers for the whole sweep (a
// 32 x 32 block per warp) instead of being read and written in L2 every iteration; each warp
// owns one 16 x 32 block of A, HU, dK, the momentum term (registers) and q_coeff, and one
// 16 x 16 tile of P1, P2 and dW. Shared memory: K, H_0^T, A, y_i [Cp, D], P1, P2 and W [Cp, Cp]
// (W loaded once), the row factors and partial row sums (220 KB at C = 64, D = 128). Three
// barriers per iteration: P1/P2 tiles and dH_0; then dK and HU; then the new A and y_{i-1} are
// written. The sums kept in L2 (dW, dK, q_coeff) are read before the work that precedes their
// update, and y_{i-1} is prefetched into L2 when the iteration starts: each warp waits on one
// round trip at a time, not on every element's.
// No atomics: every sum runs in a fixed order (deterministic gradients).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/prefetch.cuh"
#include "kernels/gka_solve/gka_mma_fragments.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"
#include "kernels/gka_solve/gka_sweep_common.cuh"

// For experiments/kernels/gka_solve_ab: the sweep kernel is a template on its step's arithmetic.
#define PRIME_GKA_SWEEP_STEPS 1

namespace prime::kernels::detail {

namespace {

using namespace gka_mma;
using namespace gka_sweep;

template <bool kBf16>
__global__ void __launch_bounds__(kThreads, 1)
    gka_chunk_solve_backward_mma_kernel(const float* __restrict__ q, const float* __restrict__ keys,
                                        const float* __restrict__ start, const float* __restrict__ weights,
                                        const float* __restrict__ from_start, const float* __restrict__ frob,
                                        const float* __restrict__ iterates, const float* __restrict__ grad,
                                        float* __restrict__ d_q, float* __restrict__ d_keys,
                                        float* __restrict__ d_start, float* __restrict__ d_weights,
                                        float* __restrict__ d_from_start, float* __restrict__ d_frob, int chunk,
                                        int dim, int padded_chunk, double ridge_strength, int num_iter,
                                        long long chunks) {
  extern __shared__ __align__(128) float smem[];
  const int Cp = padded_chunk;
  const SweepLayout L(Cp, dim, num_iter, true);
  const int ld_x = L.ld_x, ld_t = L.ld_t;
  const Sweep s(smem, L, Cp, chunk, dim);
  float* K = s.K;
  float* Adj = s.Adj;
  float* Y = s.Y;
  float* P1 = s.P1;
  float* P2 = smem + L.p2;
  float* eta = s.eta;
  float* decay = s.decay;
  float* Ws = s.Ws;
  const double* omegas = s.omegas;
  const long long m = blockIdx.x;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const size_t cd = static_cast<size_t>(chunk) * dim;
  load_operands(s, m, keys, start, weights, from_start, frob, iterates, grad, ridge_strength, num_iter,
                gka::IterateSteps{chunks, 1});

  // This warp's 16 x 32 block (rows rb*16.., columns c0..): every element of [Cp, D] has one owner.
  const int groups = dim / 32, row_blocks = Cp / 16;
  const bool owner = warp < row_blocks * groups;
  const int rb = owner ? warp / groups : 0, c0 = owner ? (warp % groups) * 32 : 0, group = c0 / 32;
  const int row_a = rb * 16 + g, row_b = row_a + 8;
  // Its tile (pr, pc) of P1, P2 and dW: all of [Cp, Cp] (dW is wanted above the diagonal too).
  const bool p_owner = warp < row_blocks * row_blocks;
  const int pr = p_owner ? warp / row_blocks : 0, pc = p_owner ? warp % row_blocks : 0;
  // Its 32 x 32 block of dH_0.
  const bool h_owner = warp < groups * groups;
  const int ha0 = h_owner ? (warp / groups) * 32 : 0, hb0 = h_owner ? (warp % groups) * 32 : 0;

  float* g_weights = d_weights + m * chunk * chunk;
  float* g_keys = d_keys + m * Cp * dim;  // [Cp, D]: padding rows included (they come out zero)
  // q_coeff is summed in d_q's own elements (read back once per iteration: an L2 hit), which keeps
  // the kernel within 128 registers; it becomes d_q = eta (q_coeff + A_1) at the end.
  float* q_coeff = d_q + m * cd;
  float carry[kTiles][4] = {}, d_h[2][kTiles][4] = {};
  __syncthreads();

  for (int i = num_iter; i >= 1; --i) {
    const double omega = omegas[i - 1];
    const float omega_f = static_cast<float>(omega), minus_omega = static_cast<float>(-omega);
    const bool accumulate = i != num_iter;
    if (owner && i >= 2 && lane < 16 && rb * 16 + lane < chunk) {  // y_{i-1}, read at this iteration's end: into L2 now
      const float* line = iterates + (static_cast<size_t>(i - 2) * chunks + m) * cd + (rb * 16 + lane) * dim + c0;
      prefetch_l2(line);
    }
    if (p_owner) {  // P1 = W o (s A K^T), P2 = s (W o y_i K^T), dW += (s A K^T) o (y_i K^T)
      float p1[2][4] = {}, p2[2][4] = {};
      float dw[2][4];  // this lane's dW elements so far, loaded before the products (an L2 round trip)
#pragma unroll
      for (int u = 0; u < 2; ++u) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int t = pr * 16 + g + 8 * (e >> 1), s = pc * 16 + 8 * u + 2 * t4 + (e & 1);
          dw[u][e] = accumulate && t < chunk && s < chunk ? g_weights[t * chunk + s] : 0.0f;
        }
      }
      for (int k0 = 0; k0 < dim; k0 += depth_step<kBf16>()) {
        FragA a_adj, a_y;
        load_a_step<kBf16>(a_adj, Adj, ld_x, pr * 16, k0, lane);
        load_a_step<kBf16>(a_y, Y, ld_x, pr * 16, k0, lane);
        FragB2 b;
        load_b2_step<kBf16>(b, K, ld_x, pc * 16, k0, lane);
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          mma3_rounded_step<kBf16>(p1[u], a_adj, b.hi + 2 * u, b.lo + 2 * u);
          mma3_rounded_step<kBf16>(p2[u], a_y, b.hi + 2 * u, b.lo + 2 * u);
        }
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = pr * 16 + g + 8 * half, s0 = pc * 16 + 8 * u + 2 * t4;
          const float scale = eta[t] * minus_omega;
          float out1[2], out2[2];
          const float2 w2 = *reinterpret_cast<const float2*>(Ws + t * ld_t + s0);
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int e = 2 * half + j, s = s0 + j;
            const bool inside = t < chunk && s < chunk;
            const float uk = p1[u][e] * scale, yk = p2[u][e], w = j ? w2.y : w2.x;
            if (inside) {
              const float gw = __fmul_rn(uk, yk);  // not contracted into the sum: the same bits as before
              g_weights[t * chunk + s] = accumulate ? __fadd_rn(dw[u][e], gw) : gw;
            }
            out1[j] = w * uk;
            out2[j] = scale * (w * yk);
          }
          *reinterpret_cast<float2*>(P1 + t * ld_t + s0) = make_float2(out1[0], out1[1]);
          *reinterpret_cast<float2*>(P2 + t * ld_t + s0) = make_float2(out2[0], out2[1]);
        }
      }
    }
    if (h_owner) {  // dH_0 += y_i^T (e s A), over the chunk's rows
      for (int k0 = 0; k0 < Cp; k0 += depth_step<kBf16>()) {
        FragA a_top, a_bottom;
        load_a_transposed_step<kBf16>(a_top, Y, ld_x, ha0, k0, lane);
        load_a_transposed_step<kBf16>(a_bottom, Y, ld_x, ha0 + 16, k0, lane);
        // The lane's depth rows' factors e s, formed once per step (2 rows, or 4 on bf16x3).
        float es[depth_step<kBf16>() / 4];
#pragma unroll
        for (int row = 0; row < depth_step<kBf16>() / 4; ++row) {
          const int r = k0 + t4 + 4 * row;
          es[row] = decay[r] * (eta[r] * minus_omega);
        }
        const auto scale = [&](int row) { return es[row]; };
#pragma unroll
        for (int j = 0; j < kTiles; ++j) {
          uint32_t b_hi[2], b_lo[2];
          load_b_rows_step<kBf16>(b_hi, b_lo, Adj, ld_x, hb0 + 8 * j, k0, lane, scale);
          mma3_rounded_step<kBf16>(d_h[0][j], a_top, b_hi, b_lo);
          mma3_rounded_step<kBf16>(d_h[1][j], a_bottom, b_hi, b_lo);
        }
      }
    }
    __syncthreads();  // P1, P2 complete
    float hu[kTiles][4] = {};
    if (owner) {
      {  // dK += P2^T A + P1^T y_i for key rows rb*16..: P[t][s] is zero for t < s.
        float dk[kTiles][4];
#pragma unroll
        for (int j = 0; j < kTiles; ++j) {
          const int d = c0 + 8 * j + 2 * t4;
          const float2 top = accumulate ? *reinterpret_cast<const float2*>(g_keys + row_a * dim + d) : float2{0, 0};
          const float2 bottom =
              accumulate ? *reinterpret_cast<const float2*>(g_keys + row_b * dim + d) : float2{0, 0};
          dk[j][0] = top.x;
          dk[j][1] = top.y;
          dk[j][2] = bottom.x;
          dk[j][3] = bottom.y;
        }
        for (int k0 = rb * 16; k0 < Cp; k0 += depth_step<kBf16>()) {
          FragA a2, a1;
          load_a_transposed_step<kBf16>(a2, P2, ld_t, rb * 16, k0, lane);
          load_a_transposed_step<kBf16>(a1, P1, ld_t, rb * 16, k0, lane);
#pragma unroll
          for (int j = 0; j < kTiles; ++j) {
            uint32_t b_hi[2], b_lo[2];
            load_b_rows_step<kBf16>(b_hi, b_lo, Adj, ld_x, c0 + 8 * j, k0, lane, NoScale{});
            mma3_rounded_step<kBf16>(dk[j], a2, b_hi, b_lo);
            load_b_rows_step<kBf16>(b_hi, b_lo, Y, ld_x, c0 + 8 * j, k0, lane, NoScale{});
            mma3_rounded_step<kBf16>(dk[j], a1, b_hi, b_lo);
          }
        }
#pragma unroll
        for (int j = 0; j < kTiles; ++j) {
          const int d = c0 + 8 * j + 2 * t4;
          *reinterpret_cast<float2*>(g_keys + row_a * dim + d) = make_float2(dk[j][0], dk[j][1]);
          *reinterpret_cast<float2*>(g_keys + row_b * dim + d) = make_float2(dk[j][2], dk[j][3]);
        }
      }
      // HU = e s (A H_0) + P1 K and the update (gka_sweep_common.cuh), with the row sums of
      // s (A H_0) o y_i and HU o y_i.
      adjoint_operator<kBf16>(hu, s, minus_omega, rb, c0, group, lane);
      adjoint_update(hu, carry, s, omega, rb, c0, group, lane, [](int, int, int, int, float2) {});
    }
    __syncthreads();  // every read of A, y_i, P1 and P2 of this iteration is done
    if (owner) {  // q_coeff += omega A_{i+1}, the new adjoint and y_{i-1}: every load first, one round trip
      const float* y_next = i >= 2 ? iterates + (static_cast<size_t>(i - 2) * chunks + m) * cd : nullptr;
      float2 y_in[kTiles][2], q_in[kTiles][2];
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int d = c0 + 8 * j + 2 * t4;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = half ? row_b : row_a;
          const bool in = t < chunk;
          y_in[j][half] = y_next && in ? __ldg(reinterpret_cast<const float2*>(y_next + t * dim + d)) : float2{0, 0};
          q_in[j][half] = accumulate && in ? *reinterpret_cast<const float2*>(q_coeff + t * dim + d) : float2{0, 0};
        }
      }
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int d = c0 + 8 * j + 2 * t4;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = half ? row_b : row_a;
          float2* adjoint = reinterpret_cast<float2*>(Adj + t * ld_x + d);
          if (t < chunk) {
            const float2 before = q_in[j][half], a = *adjoint;
            *reinterpret_cast<float2*>(q_coeff + t * dim + d) =
                make_float2(before.x + a.x * omega_f, before.y + a.y * omega_f);
          }
          *adjoint = make_float2(hu[j][2 * half], hu[j][2 * half + 1]);
          if (y_next) *reinterpret_cast<float2*>(Y + t * ld_x + d) = y_in[j][half];
        }
      }
    }
    sum_rows(s, groups);
    __syncthreads();  // the new A and y are in place
  }

  // Adj is now the adjoint of y_1 = eta q.
  if (owner) finish_q(s, q_coeff, q + m * cd, rb, c0, group, lane);
  if (h_owner) {
    float* g_start = d_start + m * dim * dim;
#pragma unroll
    for (int half_m = 0; half_m < 2; ++half_m) {
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int a_row = ha0 + 16 * half_m + g, b_col = hb0 + 8 * j + 2 * t4;
        *reinterpret_cast<float2*>(g_start + a_row * dim + b_col) = make_float2(d_h[half_m][j][0], d_h[half_m][j][1]);
        *reinterpret_cast<float2*>(g_start + (a_row + 8) * dim + b_col) =
            make_float2(d_h[half_m][j][2], d_h[half_m][j][3]);
      }
    }
  }
  __syncthreads();
  finish_rows(s, groups, m, frob, d_frob, d_from_start);
}

}  // namespace

bool gka_chunk_solve_backward_mma_serves(int64_t C, int64_t D) { return gka_chunk_solve_mma_serves(C, D); }

size_t gka_chunk_solve_backward_mma_shared_bytes(int64_t C, int64_t D, int64_t num_iter) {
  const SweepLayout layout(static_cast<int>((C + 15) / 16 * 16), static_cast<int>(D), static_cast<int>(num_iter),
                           true);
  return static_cast<size_t>(layout.floats) * sizeof(float);
}

void launch_gka_chunk_solve_backward_mma(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                         const at::Tensor& weights, const at::Tensor& from_start,
                                         const at::Tensor& frob, double ridge_strength, int num_iter,
                                         const at::Tensor& iterates, const at::Tensor& grad,
                                         const GkaSolveGradients& out, bool bf16x3) {
  const int64_t M = q.size(0), C = q.size(1), D = q.size(2);
  PRIME_CHECK(gka_chunk_solve_backward_mma_serves(C, D), "gka_chunk_solve_backward_mma: C = ", C, ", D = ", D,
              " not served");
  const size_t bytes = gka_chunk_solve_backward_mma_shared_bytes(C, D, num_iter);
  const auto kernel = bf16x3 ? gka_chunk_solve_backward_mma_kernel<true> : gka_chunk_solve_backward_mma_kernel<false>;
  PRIME_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  kernel<<<static_cast<unsigned>(M), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<float>(), keys.data_ptr<float>(), start.data_ptr<float>(), weights.data_ptr<float>(),
      from_start.data_ptr<float>(), frob.data_ptr<float>(), iterates.data_ptr<float>(), grad.data_ptr<float>(),
      out.q.data_ptr<float>(), out.keys.data_ptr<float>(), out.start.data_ptr<float>(),
      out.weights.data_ptr<float>(), out.from_start.data_ptr<float>(), out.frob.data_ptr<float>(),
      static_cast<int>(C), static_cast<int>(D), static_cast<int>((C + 15) / 16 * 16), ridge_strength, num_iter,
      static_cast<long long>(M));
  PRIME_CUDA_CHECK_LAUNCH("gka_chunk_solve_backward_mma_kernel");
}

}  // namespace prime::kernels::detail
