// CUDA kernel of GKA's chunked Chebyshev solve (gka_solve.h has the math). One block per chunk
// holds what the N iterations touch on chip: the iterates x and x_prev [C, D], the keys K [C, D],
// the chunk-start state H_0 [D, D] and the products (q and the decay weights W [C, C] are re-read
// from L2 each iteration); the operands are read from memory once and x written once (plus the
// iterates when asked).
//
// The three matmuls per iteration (X K^T, X H_0, (W o X K^T) K) run on the tensor cores in
// TF32 with the 3xTF32 split (a = a_hi + a_lo, a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi, fp32
// accumulation), which keeps fp32 accuracy: the torch-ops form it must match to 1e-4 runs its
// matmuls in full fp32, and 30 iterations of plain TF32 (10-bit mantissa) would not.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/switches.h"
#include "kernels/gka_solve/gka_mma.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"

namespace prime::kernels::detail {

namespace {

using namespace gka;

constexpr int kPerThread = kMaxChunk * kMaxDim / kThreads;  // elements of X a thread updates

// Shared-memory layout in floats; every buffer starts 32-byte aligned (C and D multiples of 16).
struct Layout {
  int chunk, dim;      // padded chunk Cp (multiple of 16) and D
  int ld_x, ld_p;      // row strides of the [Cp, D] buffers and of P [Cp, Cp]
  int x, k, h, xp, p, y, rows;  // offsets
  int floats;

  __host__ __device__ Layout(int padded_chunk, int d) : chunk(padded_chunk), dim(d) {
    ld_x = d + kPad;
    ld_p = padded_chunk + kPad;
    x = 0;
    k = x + padded_chunk * ld_x;
    h = k + padded_chunk * ld_x;
    xp = h + d * ld_x;  // x_prev
    p = xp + padded_chunk * ld_x;
    y = p + padded_chunk * ld_p;
    rows = y + padded_chunk * ld_x;
    floats = rows + 3 * padded_chunk;  // eta, 1 - eta lambda, e^{G_t}
  }
};

// One block per chunk m. Iteration (as model::gka_detail::chebyshev_iterate, same order of ops):
//   omega <- 1 / (1 - c omega);  base = i ? lerp(x_prev, eta q, omega) : omega eta q
//   x' = base + omega (1 - eta lambda) x - omega eta H x,  H x = (W o X K^T) K + e^{G} o X H_0.
__global__ void __launch_bounds__(kThreads, 1)
    gka_chunk_solve_kernel(const float* __restrict__ q, const float* __restrict__ keys,
                           const float* __restrict__ start, const float* __restrict__ weights,
                           const float* __restrict__ from_start, const float* __restrict__ frob,
                           float* __restrict__ x_out, float* __restrict__ iterates, int chunk,
                           int dim, int padded_chunk, double ridge_strength, int num_iter,
                           IterateSteps steps) {
  extern __shared__ __align__(128) float smem[];
  const Layout L(padded_chunk, dim);
  float* X = smem + L.x;
  float* K = smem + L.k;
  float* H0 = smem + L.h;
  float* X_prev = smem + L.xp;
  float* P = smem + L.p;
  float* Y = smem + L.y;
  float* eta = smem + L.rows;
  float* keep = eta + padded_chunk;   // 1 - eta lambda
  float* decay = keep + padded_chunk;  // e^{G_t}
  const long long m = blockIdx.x;
  const int tid = threadIdx.x;
  const size_t cd = static_cast<size_t>(chunk) * dim;

  load_row_factors(eta, keep, decay, frob + m * chunk, from_start + m * chunk, chunk, padded_chunk, ridge_strength);
  load_rows(H0, L.ld_x, start + m * dim * dim, dim, dim, dim);
  load_rows(K, L.ld_x, keys + m * cd, padded_chunk, chunk, dim);
  __syncthreads();

  // This thread's elements of X: i = tid + j * kThreads over [Cp, D].
  const int owned = padded_chunk * dim;
  const Owned by_x(dim), by_p(padded_chunk);
  // x_prev lives in shared memory and eta q is re-read from q (an L2 hit: the block's own
  // chunk) each iteration, which keeps 16 warps within 128 registers; W too is read from L2.
  const float* q_chunk = q + m * cd;
  const float* W = weights + m * chunk * chunk;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    if (tid + j * kThreads < owned) {
      const int t = by_x.row(j), d = by_x.column(j);
      X[t * L.ld_x + d] = t < chunk ? eta[t] * __ldg(q_chunk + t * dim + d) : 0.0f;
      X_prev[t * L.ld_x + d] = 0.0f;
    }
  }
  __syncthreads();

  ChebyshevOmegas omegas(ridge_strength);
  for (int iteration = 0; iteration < num_iter; ++iteration) {
    const float w = static_cast<float>(omegas.next());
    if (iterates) {
      float* out = iterates + steps.offset(iteration, m, cd);
      for (int i = tid; i < chunk * dim; i += kThreads) out[i] = X[(i / dim) * L.ld_x + i % dim];
    }
    // P = X K^T and Y = X H_0.
    block_gemm_any<wmma::col_major>(P, L.ld_p, false, X, L.ld_x, K, L.ld_x, padded_chunk, padded_chunk, dim);
    block_gemm_any<wmma::row_major>(Y, L.ld_x, false, X, L.ld_x, H0, L.ld_x, padded_chunk, dim, dim);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kMaxChunk * kMaxChunk / kThreads; ++j) {
      if (tid + j * kThreads < padded_chunk * padded_chunk) {
        const int t = by_p.row(j), s = by_p.column(j);
        P[t * L.ld_p + s] *= t < chunk && s < chunk ? __ldg(W + t * chunk + s) : 0.0f;
      }
    }
#pragma unroll 4
    for (int j = 0; j < kPerThread; ++j) {
      if (tid + j * kThreads < owned) {
        const int t = by_x.row(j);
        Y[t * L.ld_x + by_x.column(j)] *= decay[t];
      }
    }
    __syncthreads();
    // Y = H X = e^{G} o X H_0 + (W o X K^T) K.
    block_gemm_any<wmma::row_major>(Y, L.ld_x, true, P, L.ld_p, K, L.ld_x, padded_chunk, dim, padded_chunk);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kPerThread; ++j) {
      if (tid + j * kThreads < owned) {
        const int t = by_x.row(j), at = t * L.ld_x + by_x.column(j);
        const float x = X[at];
        const float eta_q = t < chunk ? eta[t] * __ldg(q_chunk + t * dim + by_x.column(j)) : 0.0f;
        // torch's lerp for weights >= 0.5: end - (end - start) (1 - weight).
        const float base = iteration ? eta_q - (eta_q - X_prev[at]) * (1.0f - w) : eta_q * w;
        const float next = base + keep[t] * w * x - eta[t] * w * Y[at];
        X_prev[at] = x;
        X[at] = next;
      }
    }
    __syncthreads();
  }
  for (int i = tid; i < chunk * dim; i += kThreads) x_out[m * cd + i] = X[(i / dim) * L.ld_x + i % dim];
}

size_t shared_bytes(int64_t C, int64_t D) {
  return static_cast<size_t>(Layout(static_cast<int>((C + 15) / 16 * 16), static_cast<int>(D)).floats) *
         sizeof(float);
}

// Whether this solve runs on the mma kernel (gka_solve_launch.h).
bool use_mma_kernel(int64_t C, int64_t D) {
  return gka_chunk_solve_mma_serves(C, D) &&
         !environment_switch<bool>("PRIME_GKA_SOLVE_WMMA", {{"0", false, "the mma kernel where it serves"},
                                                            {"1", true, "the wmma kernel"}});
}

size_t chosen_shared_bytes(int64_t C, int64_t D) {
  return use_mma_kernel(C, D) ? gka_chunk_solve_mma_shared_bytes(C, D) : shared_bytes(C, D);
}

}  // namespace

bool gka_chunk_solve_fits(const at::Device& device, int64_t C, int64_t D) {
  const cudaDeviceProp* properties = at::cuda::getDeviceProperties(device.index());
  return chosen_shared_bytes(C, D) <= properties->sharedMemPerBlockOptin;
}

void launch_gka_chunk_solve(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                            const at::Tensor& weights, const at::Tensor& from_start,
                            const at::Tensor& frob, double ridge_strength, int num_iter,
                            const at::Tensor& x, const at::Tensor& iterates, SolveProducts products,
                            bool chunk_major) {
  const char* op = "gka_chunk_solve";
  check_operand(q, op, "q", at::kFloat, 3);
  const int64_t M = q.size(0), C = q.size(1), D = q.size(2);
  PRIME_CHECK(C >= 1 && C <= kMaxChunk && D % 16 == 0 && D >= 16 && D <= kMaxDim, op,
              ": q must be [M, C, D] with C <= ", kMaxChunk, " and D a multiple of 16 up to ",
              kMaxDim, ", got ", q.sizes());
  check_operand(keys, op, "keys", at::kFloat, 3);
  check_operand(start, op, "start", at::kFloat, 3);
  check_operand(weights, op, "weights", at::kFloat, 3);
  check_operand(from_start, op, "from_start", at::kFloat, 2);
  check_operand(frob, op, "frob", at::kFloat, 2);
  check_operand(x, op, "x", at::kFloat, 3);
  PRIME_CHECK(keys.sizes() == q.sizes() && x.sizes() == q.sizes(), op, ": keys ", keys.sizes(),
              ", x ", x.sizes(), " vs q ", q.sizes());
  PRIME_CHECK(start.size(0) == M && start.size(1) == D && start.size(2) == D, op, ": start ", start.sizes());
  PRIME_CHECK(weights.size(0) == M && weights.size(1) == C && weights.size(2) == C, op, ": weights ",
              weights.sizes());
  PRIME_CHECK(from_start.size(0) == M && from_start.size(1) == C && frob.sizes() == from_start.sizes(),
              op, ": from_start ", from_start.sizes(), ", frob ", frob.sizes());
  PRIME_CHECK(num_iter >= 1, op, ": num_iter ", num_iter);
  if (iterates.defined()) {
    check_operand(iterates, op, "iterates", at::kFloat, 4);
    PRIME_CHECK(iterates.size(0) == (chunk_major ? M : num_iter) && iterates.size(1) == (chunk_major ? num_iter : M) &&
                    iterates.size(2) == C && iterates.size(3) == D,
                op, ": iterates ", iterates.sizes(), chunk_major ? " (chunk-major)" : "");
  }
  if (M == 0) return;
  const int padded = static_cast<int>((C + 15) / 16 * 16);
  const bool bf16_kernel = products != SolveProducts::Tf32x3 && gka_chunk_solve_bf16_serves(C, D);
  const size_t bytes =
      bf16_kernel ? gka_chunk_solve_bf16_shared_bytes(C, D, products == SolveProducts::Bf16x3 ? 3 : 2)
                  : chosen_shared_bytes(C, D);
  PRIME_CHECK(bytes <= at::cuda::getDeviceProperties(q.device().index())->sharedMemPerBlockOptin, op, ": ", bytes,
              " bytes of shared memory for C = ", C, ", D = ", D, " exceed the device's limit");
  const at::cuda::CUDAGuard guard(q.device());
  PRIME_CHECK(!(bf16_kernel && chunk_major && iterates.defined()), op,
              ": chunk-major iterates come from the TF32 kernels only (the backward's recompute)");
  if (bf16_kernel) {
    launch_gka_chunk_solve_bf16(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates,
                                products == SolveProducts::Bf16x3);
    return;
  }
  if (use_mma_kernel(C, D)) {
    launch_gka_chunk_solve_mma(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates,
                               chunk_major);
    return;
  }
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(gka_chunk_solve_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  gka_chunk_solve_kernel<<<static_cast<unsigned>(M), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<float>(), keys.data_ptr<float>(), start.data_ptr<float>(), weights.data_ptr<float>(),
      from_start.data_ptr<float>(), frob.data_ptr<float>(), x.data_ptr<float>(),
      iterates.defined() ? iterates.data_ptr<float>() : nullptr, static_cast<int>(C), static_cast<int>(D),
      padded, ridge_strength, num_iter, chunk_major ? IterateSteps{1, num_iter} : IterateSteps{M, 1});
  PRIME_CUDA_CHECK_LAUNCH("gka_chunk_solve_kernel");
}

}  // namespace prime::kernels::detail
