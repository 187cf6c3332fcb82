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
#include <mma.h>

#include <type_traits>

#include "kernels/common/cuda_check.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"

namespace prime::kernels::detail {

namespace {

using namespace nvcuda;

// 16 warps: a block holds one chunk (all of shared memory at D = 128), so its own warps are
// what hides the shared-memory and tensor-core latencies.
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxChunk = 64;
constexpr int kMaxDim = 128;
constexpr int kPerThread = kMaxChunk * kMaxDim / kThreads;  // elements of X a thread updates
constexpr int kPad = 4;  // row padding of the wmma operands: breaks bank aliasing, keeps 32 B alignment

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

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
template <typename Major>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, Major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// hi <- tf32(v), lo <- tf32(v - hi) for the fp32 values loaded into hi.
template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
#pragma unroll
  for (int i = 0; i < hi.num_elements; ++i) {
    const float value = hi.x[i];
    const float high = wmma::__float_to_tf32(value);
    lo.x[i] = wmma::__float_to_tf32(value - high);
    hi.x[i] = high;
  }
}

// acc[t] += A[16 rows, 0:depth] B[0:depth, col0 + 16 t : +16] for t < NT, 3xTF32. A row-major
// (lda); B row-major (ldb) or, with Major = col_major, B = M^T for a row-major M (ldb = M's
// row stride), so B's column n is M's row n.
template <int NT, typename Major>
__device__ __forceinline__ void warp_gemm(FragC (&acc)[NT], const float* A, int lda, const float* B,
                                          int ldb, int depth, int col0) {
  constexpr bool kRowMajor = std::is_same<Major, wmma::row_major>::value;
  for (int k0 = 0; k0 < depth; k0 += 8) {
    FragA a_hi, a_lo;
    wmma::load_matrix_sync(a_hi, A + k0, lda);
    split_tf32(a_hi, a_lo);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int col = col0 + 16 * t;
      FragB<Major> b_hi, b_lo;
      wmma::load_matrix_sync(b_hi, kRowMajor ? B + k0 * ldb + col : B + col * ldb + k0, ldb);
      split_tf32(b_hi, b_lo);
      wmma::mma_sync(acc[t], a_lo, b_hi, acc[t]);  // small terms first
      wmma::mma_sync(acc[t], a_hi, b_lo, acc[t]);
      wmma::mma_sync(acc[t], a_hi, b_hi, acc[t]);
    }
  }
}

// out[Cp, ncols] (ld_out) = (init ? init : 0) + A[Cp, depth] B[depth, ncols], the tiles spread
// over the warps: a task is one 16-row block times NT 16-column tiles.
template <int NT, typename Major>
__device__ void block_gemm(float* out, int ld_out, bool accumulate, const float* A, int lda,
                           const float* B, int ldb, int rows, int ncols, int depth) {
  const int warp = threadIdx.x / 32;
  const int groups = ncols / (16 * NT);
  const int tasks = (rows / 16) * groups;
  for (int task = warp; task < tasks; task += kWarps) {
    const int row0 = (task / groups) * 16, col0 = (task % groups) * 16 * NT;
    FragC acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (accumulate)
        wmma::load_matrix_sync(acc[t], out + row0 * ld_out + col0 + 16 * t, ld_out, wmma::mem_row_major);
      else
        wmma::fill_fragment(acc[t], 0.0f);
    }
    warp_gemm<NT, Major>(acc, A + row0 * lda, lda, B, ldb, depth, col0);
#pragma unroll
    for (int t = 0; t < NT; ++t)
      wmma::store_matrix_sync(out + row0 * ld_out + col0 + 16 * t, acc[t], ld_out, wmma::mem_row_major);
  }
}

template <typename Major>
__device__ void block_gemm_any(float* out, int ld_out, bool accumulate, const float* A, int lda,
                               const float* B, int ldb, int rows, int ncols, int depth) {
  // Two tiles per task (reusing each A fragment) where that still gives every warp a task.
  if (ncols % 32 == 0 && (rows / 16) * (ncols / 32) >= kWarps)
    block_gemm<2, Major>(out, ld_out, accumulate, A, lda, B, ldb, rows, ncols, depth);
  else
    block_gemm<1, Major>(out, ld_out, accumulate, A, lda, B, ldb, rows, ncols, depth);
}

// The elements i = threadIdx.x + j * kThreads (j = 0, 1, ...) of a row-major [rows, width]
// matrix, as (row, column): when width divides kThreads (D or Cp of 16, 32, 64, 128) the column
// is the same for every j and the row advances by kThreads / width, so the per-iteration passes
// need no integer division.
struct Owned {
  int row0, col, row_step, width;
  bool even;
  __device__ explicit Owned(int w) : width(w), even(kThreads % w == 0) {
    row0 = threadIdx.x / w;
    col = threadIdx.x % w;
    row_step = kThreads / w;
  }
  __device__ __forceinline__ int row(int j) const {
    return even ? row0 + j * row_step : (threadIdx.x + j * kThreads) / width;
  }
  __device__ __forceinline__ int column(int j) const {
    return even ? col : (threadIdx.x + j * kThreads) % width;
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
                           long long chunks) {
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

  for (int t = tid; t < padded_chunk; t += kThreads) {
    if (t < chunk) {
      const float f = frob[m * chunk + t];
      const float lambda = f * static_cast<float>(ridge_strength);
      const float e = 2.0f / (2.0f * lambda + f);
      eta[t] = e;
      keep[t] = 1.0f - e * lambda;
      decay[t] = from_start[m * chunk + t];
    } else {  // padding rows stay zero through every iteration
      eta[t] = 0.0f;
      keep[t] = 0.0f;
      decay[t] = 0.0f;
    }
  }
  for (int i = tid; i < dim * dim; i += kThreads)
    H0[(i / dim) * L.ld_x + i % dim] = start[m * dim * dim + i];
  for (int i = tid; i < padded_chunk * dim; i += kThreads) {
    const int t = i / dim, d = i % dim;
    K[t * L.ld_x + d] = t < chunk ? keys[m * cd + i] : 0.0f;
  }
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

  const double spread = 1.0 / (2.0 * (2.0 * ridge_strength + 1.0));
  const double c = spread * spread;
  double omega = 2.0;
  for (int iteration = 0; iteration < num_iter; ++iteration) {
    omega = 1.0 / (1.0 - c * omega);
    const float w = static_cast<float>(omega);
    if (iterates) {
      float* out = iterates + (static_cast<size_t>(iteration) * chunks + m) * cd;
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

}  // namespace

bool gka_chunk_solve_fits(const at::Device& device, int64_t C, int64_t D) {
  const cudaDeviceProp* properties = at::cuda::getDeviceProperties(device.index());
  return shared_bytes(C, D) <= properties->sharedMemPerBlockOptin;
}

void launch_gka_chunk_solve(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                            const at::Tensor& weights, const at::Tensor& from_start,
                            const at::Tensor& frob, double ridge_strength, int num_iter,
                            const at::Tensor& x, const at::Tensor& iterates) {
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
    PRIME_CHECK(iterates.size(0) == num_iter && iterates.size(1) == M && iterates.size(2) == C &&
                    iterates.size(3) == D,
                op, ": iterates ", iterates.sizes());
  }
  if (M == 0) return;
  const int padded = static_cast<int>((C + 15) / 16 * 16);
  const size_t bytes = shared_bytes(C, D);
  PRIME_CHECK(gka_chunk_solve_fits(q.device(), C, D), op, ": ", bytes, " bytes of shared memory for C = ", C,
              ", D = ", D, " exceed the device's limit");
  const at::cuda::CUDAGuard guard(q.device());
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(gka_chunk_solve_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  gka_chunk_solve_kernel<<<static_cast<unsigned>(M), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<float>(), keys.data_ptr<float>(), start.data_ptr<float>(), weights.data_ptr<float>(),
      from_start.data_ptr<float>(), frob.data_ptr<float>(), x.data_ptr<float>(),
      iterates.defined() ? iterates.data_ptr<float>() : nullptr, static_cast<int>(C), static_cast<int>(D),
      padded, ridge_strength, num_iter, static_cast<long long>(M));
  PRIME_CUDA_CHECK_LAUNCH("gka_chunk_solve_kernel");
}

}  // namespace prime::kernels::detail
