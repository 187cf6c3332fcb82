// The adjoint recurrence of GKA's chunked Chebyshev solve alone (PRIME_GKA_SWEEP=split; gka_solve.h,
// gka_chunk_adjoint_recurrence), for D a multiple of 32 on the raw m16n8k8 TF32 MMA.
//
// The reverse sweep kernel (gka_solve_backward_mma_kernels.cu) runs seven products per iteration; four
// of them only sum the gradients of K, H_0 and W, which model::ChunkSolve forms instead after the
// recurrence, from the adjoints this kernel writes (contraction N C: lib/model/gka_solve.cpp). What is
// left per iteration i = N..1, with A the adjoint of y_{i+1} and s = -omega_i eta per row, is the
// sweep kernel's arithmetic for these, operation for operation (so A, dq, d e^G and d f come out bit
// for bit as that kernel gives them):
//   P1 = W o (s A K^T) (its lower tiles: W is zero above the diagonal);
//   HU = e s (A H_0) + P1 K;  d e += rowsum(s (A H_0) o y_i);  hy += rowsum(HU o y_i);
//   q_coeff += omega A;  A <- HU + kappa omega A + (1 - omega_{i+1}) A_{i+2};
// and U_i = s A goes to `adjoints` [M, N, C, D] (chunk-major: the stacked products read a chunk's N C
// rows as one matrix). Three block barriers per iteration, as in the sweep kernel: P1 complete; every
// read of A done; the new A and y_{i-1} in place. (A second A buffer would save the middle one; it
// fits beside W at C = 64, D = 128 only if y_i, which only its owner reads, left shared memory for 16
// more registers a thread, past the 128 this kernel already uses.)
// Shared memory: K, H_0^T, A, y_i [Cp, D], P1 and W [Cp, Cp], the row factors and partial row sums,
// the omegas (203 KB at C = 64, D = 128).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/prefetch.cuh"
#include "kernels/gka_solve/gka_mma_fragments.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"
#include "kernels/gka_solve/gka_sweep_common.cuh"

namespace prime::kernels::detail {

namespace {

using namespace gka_mma;
using namespace gka_sweep;

__global__ void __launch_bounds__(kThreads, 1)
    gka_chunk_adjoint_mma_kernel(const float* __restrict__ q, const float* __restrict__ keys,
                                 const float* __restrict__ start, const float* __restrict__ weights,
                                 const float* __restrict__ from_start, const float* __restrict__ frob,
                                 const float* __restrict__ iterates, const float* __restrict__ grad,
                                 float* __restrict__ adjoints, float* __restrict__ d_q,
                                 float* __restrict__ d_from_start, float* __restrict__ d_frob, int chunk, int dim,
                                 int padded_chunk, double ridge_strength, int num_iter) {
  extern __shared__ __align__(128) float smem[];
  const int Cp = padded_chunk;
  const SweepLayout L(Cp, dim, num_iter, false);
  const Sweep s(smem, L, Cp, chunk, dim);
  const long long m = blockIdx.x;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const size_t cd = static_cast<size_t>(chunk) * dim;
  // The iterates chunk-major, [M, N, C, D], as the forward kernel writes them for this kernel.
  const gka::IterateSteps steps{1, num_iter};
  load_operands(s, m, keys, start, weights, from_start, frob, iterates, grad, ridge_strength, num_iter, steps);

  // This warp's 16 x 32 block (rows rb*16.., columns c0..): every element of [Cp, D] has one owner.
  const int groups = dim / 32, row_blocks = Cp / 16;
  const bool owner = warp < row_blocks * groups;
  const int rb = owner ? warp / groups : 0, c0 = owner ? (warp % groups) * 32 : 0, group = c0 / 32;
  // Its tile of P1, if any: the lower tiles (pr, pc), pc <= pr, in order.
  const bool p_owner = warp < row_blocks * (row_blocks + 1) / 2;
  int pr = 0, pc = warp;
  while (pc > pr) pc -= ++pr;
  if (!p_owner) pr = pc = 0;

  // q_coeff is summed in d_q's own elements (an L2 hit per iteration, as in the sweep kernel); it
  // becomes d_q = eta (q_coeff + A_1) at the end.
  float* q_coeff = d_q + m * cd;
  float* u_chunk = adjoints + m * static_cast<size_t>(num_iter) * cd;
  float carry[kTiles][4] = {};
  __syncthreads();

  for (int i = num_iter; i >= 1; --i) {
    const double omega = s.omegas[i - 1];
    const float omega_f = static_cast<float>(omega), minus_omega = static_cast<float>(-omega);
    const bool accumulate = i != num_iter;
    if (owner && i >= 2 && lane < 16 && rb * 16 + lane < chunk) {  // y_{i-1}, read at this iteration's end: into L2 now
      const float* line = iterates + steps.offset(i - 2, m, cd) + (rb * 16 + lane) * dim + c0;
      prefetch_l2(line);
    }
    if (p_owner) {  // P1 = W o (s A K^T), as the sweep kernel forms it
      float p1[2][4] = {};
      for (int k0 = 0; k0 < dim; k0 += 8) {
        FragA a_adj;
        load_a(a_adj, s.Adj, s.ld_x, pr * 16, k0, lane);
        FragB2 b;
        load_b2(b, s.K, s.ld_x, pc * 16, k0, lane);
#pragma unroll
        for (int u = 0; u < 2; ++u) mma3_rounded(p1[u], a_adj, b.hi + 2 * u, b.lo + 2 * u);
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = pr * 16 + g + 8 * half, s0 = pc * 16 + 8 * u + 2 * t4;
          const float scale = s.eta[t] * minus_omega;
          const float2 w2 = *reinterpret_cast<const float2*>(s.Ws + t * s.ld_t + s0);
          *reinterpret_cast<float2*>(s.P1 + t * s.ld_t + s0) =
              make_float2(w2.x * (p1[u][2 * half] * scale), w2.y * (p1[u][2 * half + 1] * scale));
        }
      }
    }
    __syncthreads();  // P1 complete
    float hu[kTiles][4] = {};
    if (owner) {
      adjoint_operator(hu, s, minus_omega, rb, c0, group, lane);
      // q_coeff's sums (L2 round trips) loaded before the stores.
      float2 q_in[kTiles][2];
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int d = c0 + 8 * j + 2 * t4;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = rb * 16 + g + 8 * half;
          q_in[j][half] =
              accumulate && t < chunk ? *reinterpret_cast<const float2*>(q_coeff + t * dim + d) : float2{0, 0};
        }
      }
      // U_i = s A_{i+1} to the stack, q_coeff += omega A_{i+1}, as A_{i+1} is read for the update.
      float* u_out = u_chunk + static_cast<size_t>(i - 1) * cd;
      adjoint_update(hu, carry, s, omega, rb, c0, group, lane, [&](int j, int half, int t, int d, float2 a) {
        if (t >= chunk) return;
        const float scale = s.eta[t] * minus_omega;
        *reinterpret_cast<float2*>(u_out + t * dim + d) = make_float2(a.x * scale, a.y * scale);
        const float2 before = q_in[j][half];
        *reinterpret_cast<float2*>(q_coeff + t * dim + d) =
            make_float2(before.x + a.x * omega_f, before.y + a.y * omega_f);
      });
    }
    __syncthreads();  // every read of A and y_i of this iteration is done
    if (owner) {      // the new adjoint and y_{i-1} (prefetched into L2 at the start): every load first
      const float* y_next = i >= 2 ? iterates + steps.offset(i - 2, m, cd) : nullptr;
      float2 y_in[kTiles][2];
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = rb * 16 + g + 8 * half, d = c0 + 8 * j + 2 * t4;
          y_in[j][half] =
              y_next && t < chunk ? __ldg(reinterpret_cast<const float2*>(y_next + t * dim + d)) : float2{0, 0};
        }
      }
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int d = c0 + 8 * j + 2 * t4;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = rb * 16 + g + 8 * half;
          *reinterpret_cast<float2*>(s.Adj + t * s.ld_x + d) = make_float2(hu[j][2 * half], hu[j][2 * half + 1]);
          if (y_next) *reinterpret_cast<float2*>(s.Y + t * s.ld_x + d) = y_in[j][half];
        }
      }
    }
    sum_rows(s, groups);
    __syncthreads();  // the new A and y are in place
  }

  // A is now the adjoint of y_1 = eta q.
  if (owner) finish_q(s, q_coeff, q + m * cd, rb, c0, group, lane);
  __syncthreads();
  finish_rows(s, groups, m, frob, d_frob, d_from_start);
}

}  // namespace

bool gka_chunk_adjoint_mma_serves(int64_t C, int64_t D) { return gka_chunk_solve_mma_serves(C, D); }

size_t gka_chunk_adjoint_mma_shared_bytes(int64_t C, int64_t D, int64_t num_iter) {
  const SweepLayout layout(static_cast<int>((C + 15) / 16 * 16), static_cast<int>(D), static_cast<int>(num_iter),
                           false);
  return static_cast<size_t>(layout.floats) * sizeof(float);
}

bool gka_chunk_adjoint_fits(const at::Device& device, int64_t C, int64_t D, int64_t num_iter) {
  if (!gka_chunk_adjoint_mma_serves(C, D) || num_iter < 1 || num_iter > (1 << 20)) return false;
  const cudaDeviceProp* properties = at::cuda::getDeviceProperties(device.index());
  return gka_chunk_adjoint_mma_shared_bytes(C, D, num_iter) <= properties->sharedMemPerBlockOptin;
}

void launch_gka_chunk_adjoint_mma(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                  const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                                  double ridge_strength, int num_iter, const at::Tensor& iterates,
                                  const at::Tensor& grad, const at::Tensor& adjoints, const at::Tensor& d_q,
                                  const at::Tensor& d_from_start, const at::Tensor& d_frob) {
  const int64_t M = q.size(0), C = q.size(1), D = q.size(2);
  PRIME_CHECK(gka_chunk_adjoint_mma_serves(C, D), "gka_chunk_adjoint_mma: C = ", C, ", D = ", D, " not served");
  PRIME_CHECK(num_iter >= 1 && iterates.sizes() == at::IntArrayRef({M, num_iter, C, D}) &&
                  adjoints.sizes() == at::IntArrayRef({M, num_iter, C, D}) && grad.sizes() == q.sizes() &&
                  d_q.sizes() == q.sizes() && d_from_start.sizes() == at::IntArrayRef({M, C}) &&
                  d_frob.sizes() == at::IntArrayRef({M, C}),
              "gka_chunk_adjoint_mma: operand shapes (iterates ", iterates.sizes(), ", adjoints ", adjoints.sizes(),
              ") for q ", q.sizes(), " and N = ", num_iter);
  for (const at::Tensor* t : {&q, &keys, &start, &weights, &from_start, &frob, &iterates, &grad, &adjoints, &d_q,
                              &d_from_start, &d_frob})
    PRIME_CHECK(t->is_cuda() && t->scalar_type() == at::kFloat && t->is_contiguous() && t->device() == q.device(),
                "gka_chunk_adjoint_mma: every operand must be a contiguous fp32 tensor on q's device");
  PRIME_CHECK(gka_chunk_adjoint_fits(q.device(), C, D, num_iter), "gka_chunk_adjoint_mma: C = ", C, ", D = ", D,
              ", N = ", num_iter, " exceed the device's shared memory");
  const c10::cuda::CUDAGuard guard(q.device());
  const size_t bytes = gka_chunk_adjoint_mma_shared_bytes(C, D, num_iter);
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(gka_chunk_adjoint_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  gka_chunk_adjoint_mma_kernel<<<static_cast<unsigned>(M), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<float>(), keys.data_ptr<float>(), start.data_ptr<float>(), weights.data_ptr<float>(),
      from_start.data_ptr<float>(), frob.data_ptr<float>(), iterates.data_ptr<float>(), grad.data_ptr<float>(),
      adjoints.data_ptr<float>(), d_q.data_ptr<float>(), d_from_start.data_ptr<float>(), d_frob.data_ptr<float>(),
      static_cast<int>(C), static_cast<int>(D), static_cast<int>((C + 15) / 16 * 16), ridge_strength, num_iter);
  PRIME_CUDA_CHECK_LAUNCH("gka_chunk_adjoint_mma_kernel");
}

}  // namespace prime::kernels::detail
