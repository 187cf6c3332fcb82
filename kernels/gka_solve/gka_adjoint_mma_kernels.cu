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
// read of A done; the new A and y_{i-1} in place. (A second A buffer would save the middle one but
// does not fit beside W at C = 64, D = 128.)
// Shared memory: K, H_0^T, A, y_i [Cp, D], P1 and W [Cp, Cp], the row factors and partial row sums,
// the omegas (203 KB at C = 64, D = 128).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/prefetch.cuh"
#include "kernels/gka_solve/gka_chebyshev.cuh"
#include "kernels/gka_solve/gka_mma_fragments.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"

namespace prime::kernels::detail {

namespace {

using namespace gka;
using namespace gka_mma;

constexpr int kThreads = 512;
constexpr int kPad = 4;        // row padding in floats (ldmatrix rows on distinct banks)
constexpr int kTiles = 4;      // n8 tiles of a warp's 16 x 32 block
constexpr int kMaxGroups = 4;  // 32-column groups of a row (D <= 128): the partial row sums

struct AdjointLayout {
  int ld_x, ld_t;  // row strides of the [Cp, D] / [D, D] buffers and of the [Cp, Cp] ones
  int k, ht, a, y, p1, rows, parts, w, omegas, floats;

  __host__ __device__ AdjointLayout(int padded_chunk, int d, int num_iter) {
    ld_x = d + kPad;
    ld_t = padded_chunk + kPad;
    k = 0;
    ht = k + padded_chunk * ld_x;  // H_0^T: B^T of A H_0
    a = ht + d * ld_x;             // the adjoint A
    y = a + padded_chunk * ld_x;   // y_i
    p1 = y + padded_chunk * ld_x;
    rows = p1 + padded_chunk * ld_t;          // eta, kappa, decay, d decay, hy
    parts = rows + 5 * padded_chunk;          // [Cp, kMaxGroups] twice: d decay and hy partials
    w = parts + 2 * padded_chunk * kMaxGroups;  // the chunk's weights [Cp, Cp] (row stride ld_t), zero-padded
    omegas = w + padded_chunk * ld_t;           // num_iter doubles (offset even: 8-byte aligned)
    floats = omegas + 2 * num_iter;
  }
};

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

__global__ void __launch_bounds__(kThreads, 1)
    gka_chunk_adjoint_mma_kernel(const float* __restrict__ q, const float* __restrict__ keys,
                                 const float* __restrict__ start, const float* __restrict__ weights,
                                 const float* __restrict__ from_start, const float* __restrict__ frob,
                                 const float* __restrict__ iterates, const float* __restrict__ grad,
                                 float* __restrict__ adjoints, float* __restrict__ d_q,
                                 float* __restrict__ d_from_start, float* __restrict__ d_frob, int chunk, int dim,
                                 int padded_chunk, double ridge_strength, int num_iter, long long chunks) {
  extern __shared__ __align__(128) float smem[];
  const int Cp = padded_chunk;
  const AdjointLayout L(Cp, dim, num_iter);
  const int ld_x = L.ld_x, ld_t = L.ld_t;
  float* K = smem + L.k;
  float* Ht = smem + L.ht;
  float* Adj = smem + L.a;
  float* Y = smem + L.y;
  float* P1 = smem + L.p1;
  float* eta = smem + L.rows;
  float* kappa = eta + Cp;
  float* decay = kappa + Cp;
  float* g_decay = decay + Cp;
  float* hy = g_decay + Cp;
  float* part_decay = smem + L.parts;
  float* part_hy = part_decay + Cp * kMaxGroups;
  float* Ws = smem + L.w;
  double* omegas = reinterpret_cast<double*>(smem + L.omegas);
  const long long m = blockIdx.x;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const size_t cd = static_cast<size_t>(chunk) * dim;

  for (int t = tid; t < Cp; t += kThreads) {
    const RowFactors f(frob + m * chunk, from_start + m * chunk, t, chunk, ridge_strength);
    eta[t] = f.eta;
    kappa[t] = f.keep;
    decay[t] = f.decay;
    g_decay[t] = 0.0f;
    hy[t] = 0.0f;
  }
  if (tid == 0) {  // omega_1..omega_N, as ChunkSolve::backward computes them (double)
    ChebyshevOmegas sequence(ridge_strength);
    for (int k = 0; k < num_iter; ++k) omegas[k] = sequence.next();
  }
  for (int i = tid; i < Cp * Cp; i += kThreads) {
    const int t = i / Cp, u = i % Cp;
    Ws[t * ld_t + u] = t < chunk && u < chunk ? weights[(m * chunk + t) * chunk + u] : 0.0f;
  }
  for (int i = tid; i < dim * dim; i += kThreads) Ht[(i % dim) * ld_x + i / dim] = start[m * dim * dim + i];
  const float* y_last = iterates + (static_cast<size_t>(num_iter - 1) * chunks + m) * cd;
  for (int i = tid; i < Cp * dim; i += kThreads) {
    const int r = i / dim, c = i % dim;
    const bool in = r < chunk;
    K[r * ld_x + c] = in ? keys[m * cd + i] : 0.0f;
    Adj[r * ld_x + c] = in ? grad[m * cd + i] : 0.0f;  // the adjoint of y_{N+1}, the output
    Y[r * ld_x + c] = in ? y_last[i] : 0.0f;
  }

  // This warp's 16 x 32 block (rows rb*16.., columns c0..): every element of [Cp, D] has one owner.
  const int groups = dim / 32, row_blocks = Cp / 16;
  const bool owner = warp < row_blocks * groups;
  const int rb = owner ? warp / groups : 0, c0 = owner ? (warp % groups) * 32 : 0, group = c0 / 32;
  const int row_a = rb * 16 + g, row_b = row_a + 8;
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
    const double omega = omegas[i - 1];
    const float omega_f = static_cast<float>(omega), minus_omega = static_cast<float>(-omega);
    const bool accumulate = i != num_iter;
    if (owner && i >= 2 && lane < 16 && rb * 16 + lane < chunk) {  // y_{i-1}, read at this iteration's end: into L2 now
      const float* line = iterates + (static_cast<size_t>(i - 2) * chunks + m) * cd + (rb * 16 + lane) * dim + c0;
      prefetch_l2(line);
    }
    if (p_owner) {  // P1 = W o (s A K^T)
      float p1[2][4] = {};
      for (int k0 = 0; k0 < dim; k0 += 8) {
        FragA a_adj;
        load_a(a_adj, Adj, ld_x, pr * 16, k0, lane);
        FragB2 b;
        load_b2(b, K, ld_x, pc * 16, k0, lane);
#pragma unroll
        for (int u = 0; u < 2; ++u) mma3_rounded(p1[u], a_adj, b.hi + 2 * u, b.lo + 2 * u);
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = pr * 16 + g + 8 * half, s0 = pc * 16 + 8 * u + 2 * t4;
          const float scale = eta[t] * minus_omega;
          const float2 w2 = *reinterpret_cast<const float2*>(Ws + t * ld_t + s0);
          *reinterpret_cast<float2*>(P1 + t * ld_t + s0) =
              make_float2(w2.x * (p1[u][2 * half] * scale), w2.y * (p1[u][2 * half + 1] * scale));
        }
      }
    }
    __syncthreads();  // P1 complete
    float hu[kTiles][4] = {};
    if (owner) {
      // HU = e s (A H_0) + P1 K, with the row sums of s (A H_0) o y_i and HU o y_i.
      warp_product<kTiles / 2, true>(hu, Adj, ld_x, rb * 16, Ht, ld_x, c0, dim, lane);
      const float scale_a = eta[row_a] * minus_omega, scale_b = eta[row_b] * minus_omega;
      const float e_a = decay[row_a], e_b = decay[row_b];
      float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int d = c0 + 8 * j + 2 * t4;
        const float2 ya = *reinterpret_cast<const float2*>(Y + row_a * ld_x + d);
        const float2 yb = *reinterpret_cast<const float2*>(Y + row_b * ld_x + d);
        const float y[4] = {ya.x, ya.y, yb.x, yb.y};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float uh0 = hu[j][e] * (e < 2 ? scale_a : scale_b);
          (e < 2 ? sum_a : sum_b) += uh0 * y[e];
          hu[j][e] = (e < 2 ? e_a : e_b) * uh0;
        }
      }
      store_row_sums(part_decay, row_a, row_b, group, sum_a, sum_b);
      // P1's columns past the diagonal block are zero.
      warp_product_rows<kTiles, true>(hu, P1, ld_t, rb * 16, K, ld_x, c0, 16 * (rb + 1), lane);
      const float kappa_a = kappa[row_a] * omega_f, kappa_b = kappa[row_b] * omega_f;
      const float one_minus_omega = static_cast<float>(1.0 - omega);
      // q_coeff's sums (L2 round trips) loaded before the stores.
      float* u_out = u_chunk + static_cast<size_t>(i - 1) * cd;
      float2 q_in[kTiles][2];
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int d = c0 + 8 * j + 2 * t4;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = half ? row_b : row_a;
          q_in[j][half] =
              accumulate && t < chunk ? *reinterpret_cast<const float2*>(q_coeff + t * dim + d) : float2{0, 0};
        }
      }
      sum_a = 0.0f;
      sum_b = 0.0f;
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int d = c0 + 8 * j + 2 * t4;
        const float2 ya = *reinterpret_cast<const float2*>(Y + row_a * ld_x + d);
        const float2 yb = *reinterpret_cast<const float2*>(Y + row_b * ld_x + d);
        const float2 aa = *reinterpret_cast<const float2*>(Adj + row_a * ld_x + d);
        const float2 ab = *reinterpret_cast<const float2*>(Adj + row_b * ld_x + d);
        const float y[4] = {ya.x, ya.y, yb.x, yb.y}, adjoint[4] = {aa.x, aa.y, ab.x, ab.y};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          (e < 2 ? sum_a : sum_b) += hu[j][e] * y[e];
          // A_i = HU + kappa omega_i A_{i+1} + (1 - omega_{i+1}) A_{i+2}; hu becomes A_i.
          hu[j][e] = carry[j][e] + (hu[j][e] + (e < 2 ? kappa_a : kappa_b) * adjoint[e]);
          carry[j][e] = adjoint[e] * one_minus_omega;
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = half ? row_b : row_a;
          const float2 a = half ? ab : aa;
          if (t < chunk) {
            const float scale = half ? scale_b : scale_a;
            *reinterpret_cast<float2*>(u_out + t * dim + d) = make_float2(a.x * scale, a.y * scale);
            const float2 before = q_in[j][half];
            *reinterpret_cast<float2*>(q_coeff + t * dim + d) =
                make_float2(before.x + a.x * omega_f, before.y + a.y * omega_f);
          }
        }
      }
      store_row_sums(part_hy, row_a, row_b, group, sum_a, sum_b);
    }
    __syncthreads();  // every read of A and y_i of this iteration is done
    if (owner) {      // the new adjoint and y_{i-1} (read-only, prefetched into L2 at the start)
      const float* y_next = i >= 2 ? iterates + (static_cast<size_t>(i - 2) * chunks + m) * cd : nullptr;
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
        const int d = c0 + 8 * j + 2 * t4;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int t = half ? row_b : row_a;
          *reinterpret_cast<float2*>(Adj + t * ld_x + d) = make_float2(hu[j][2 * half], hu[j][2 * half + 1]);
          if (y_next)
            *reinterpret_cast<float2*>(Y + t * ld_x + d) =
                t < chunk ? __ldg(reinterpret_cast<const float2*>(y_next + t * dim + d)) : float2{0, 0};
        }
      }
    }
    if (tid < Cp) {  // the rows' sums, in a fixed order
      float sum_decay = 0.0f, sum_hy = 0.0f;
      for (int gi = 0; gi < groups; ++gi) {
        sum_decay += part_decay[tid * kMaxGroups + gi];
        sum_hy += part_hy[tid * kMaxGroups + gi];
      }
      g_decay[tid] += sum_decay;
      hy[tid] += sum_hy;
    }
    __syncthreads();  // the new A and y are in place
  }

  // Adj is now the adjoint of y_1 = eta q: dq = eta (q_coeff + A_1), d eta = rowsum(that o q) + hy / eta.
  if (owner) {
    const float* q_chunk = q + m * cd;
    float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      const int d = c0 + 8 * j + 2 * t4;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = e < 2 ? row_a : row_b, col = d + (e & 1);
        if (t >= chunk) continue;
        const float coeff = q_coeff[t * dim + col] + Adj[t * ld_x + col];
        (e < 2 ? sum_a : sum_b) += coeff * q_chunk[t * dim + col];
        q_coeff[t * dim + col] = eta[t] * coeff;
      }
    }
    store_row_sums(part_decay, row_a, row_b, group, sum_a, sum_b);
  }
  __syncthreads();
  if (tid < chunk) {
    float part = 0.0f;
    for (int gi = 0; gi < groups; ++gi) part += part_decay[tid * kMaxGroups + gi];
    const float d_eta = part + hy[tid] / eta[tid];
    d_frob[m * chunk + tid] = d_eta * (-eta[tid] / frob[m * chunk + tid]);
    d_from_start[m * chunk + tid] = g_decay[tid];
  }
}

}  // namespace

bool gka_chunk_adjoint_mma_serves(int64_t C, int64_t D) { return gka_chunk_solve_mma_serves(C, D); }

size_t gka_chunk_adjoint_mma_shared_bytes(int64_t C, int64_t D, int64_t num_iter) {
  const AdjointLayout layout(static_cast<int>((C + 15) / 16 * 16), static_cast<int>(D), static_cast<int>(num_iter));
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
  PRIME_CHECK(num_iter >= 1 && iterates.sizes() == at::IntArrayRef({num_iter, M, C, D}) &&
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
      static_cast<int>(C), static_cast<int>(D), static_cast<int>((C + 15) / 16 * 16), ridge_strength, num_iter,
      static_cast<long long>(M));
  PRIME_CUDA_CHECK_LAUNCH("gka_chunk_adjoint_mma_kernel");
}

}  // namespace prime::kernels::detail
