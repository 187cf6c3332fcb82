// The forward kernel of GKA's chunked Chebyshev solve on the bf16 tensor cores for fp32 operands
// (gka_solve.h has the math, gka_solve_bf16.cuh the iteration and its two forms): bf16x3 products
// or the bf16 form's (the keys and H_0 rounded to bf16), D in {32, 64, 96, 128}. The keys and H_0
// are split (or rounded) into shared memory once; q, W, e^{G} and ||H_t||_F are read from their
// fp32 tensors.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/cuda_check.cuh"
#include "kernels/gka_solve/gka_solve_bf16.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"

namespace prime::kernels::detail {

namespace {

using namespace gka_bf16;

// dst [rows][cols] (row stride ld) <- the fp32 rows of src (row stride cols), split; rows at or past
// `valid` are zeros (not read).
template <int Form>
__device__ __forceinline__ void load_split(const SplitMatrix& dst, int ld, const float* src, int rows, int valid,
                                           int cols) {
  const int pairs = cols / 2;
  for (int i = static_cast<int>(threadIdx.x); i < rows * pairs; i += kThreads) {
    const int r = i / pairs, c = 2 * (i % pairs);
    const float2 value = r < valid ? *reinterpret_cast<const float2*>(src + r * cols + c) : make_float2(0.0f, 0.0f);
    store_split<Form == kBf16x3>(dst, r * ld + c, value.x, value.y);
  }
}

template <int D, int Form>
__global__ void __launch_bounds__(kThreads, 1)
    gka_chunk_solve_bf16_kernel(const float* __restrict__ q, const float* __restrict__ keys,
                                const float* __restrict__ start, const float* __restrict__ weights,
                                const float* __restrict__ from_start, const float* __restrict__ frob,
                                float* __restrict__ x_out, float* __restrict__ iterates, int chunk, int padded_chunk,
                                double ridge_strength, int num_iter, long long chunks) {
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  const Shared s(smem_bytes, Layout(padded_chunk, D, Form));
  const Roles r(padded_chunk, D);
  const long long m = blockIdx.x;
  const int g = threadIdx.x % 32 / 4;
  const size_t cd = static_cast<size_t>(chunk) * D;
  load_split<Form>(s.K, s.ld_d, keys + m * cd, padded_chunk, chunk, D);
  load_split<Form>(s.H, s.ld_d, start + m * D * D, D, D, D);

  WarpState state;
  for (int i = 0; i < 2; ++i)
    state.rows[i] = RowFactors(frob + m * chunk, from_start + m * chunk, 16 * r.rb + g + 8 * i, chunk, ridge_strength);
  const float* q_chunk = q + m * cd;
  const float* w_chunk = weights + m * chunk * chunk;
  start_solve(
      s, r, state, chunk, [&](int row, int col) { return *reinterpret_cast<const float2*>(q_chunk + row * D + col); },
      [&](int t, int u) { return w_chunk[t * chunk + u]; });
  run_solve<D, Form>(s, r, state, ridge_strength, num_iter, [&](int iteration, int row, int col, float2 x) {
    if (iterates && row < chunk)
      *reinterpret_cast<float2*>(iterates + (static_cast<size_t>(iteration) * chunks + m) * cd + row * D + col) = x;
  });
  if (!r.owner) return;
  for_each_block_pair(16 * r.rb, r.c0, [&](int, int, int row, int col) {
    if (row < chunk)
      *reinterpret_cast<float2*>(x_out + m * cd + row * D + col) =
          *reinterpret_cast<const float2*>(s.Xf + row * s.ld_f + col);
  });
}

template <int D, int Form>
void launch_typed(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start, const at::Tensor& weights,
                  const at::Tensor& from_start, const at::Tensor& frob, double ridge_strength, int num_iter,
                  const at::Tensor& x, const at::Tensor& iterates) {
  const int64_t M = q.size(0), C = q.size(1);
  const size_t bytes = gka_chunk_solve_bf16_shared_bytes(C, D, Form);
  const auto kernel = gka_chunk_solve_bf16_kernel<D, Form>;
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  kernel<<<static_cast<unsigned>(M), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<float>(), keys.data_ptr<float>(), start.data_ptr<float>(), weights.data_ptr<float>(),
      from_start.data_ptr<float>(), frob.data_ptr<float>(), x.data_ptr<float>(),
      iterates.defined() ? iterates.data_ptr<float>() : nullptr, static_cast<int>(C),
      static_cast<int>((C + 15) / 16 * 16), ridge_strength, num_iter, static_cast<long long>(M));
  PRIME_CUDA_CHECK_LAUNCH("gka_chunk_solve_bf16_kernel");
}

template <int Form>
void launch_form(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start, const at::Tensor& weights,
                  const at::Tensor& from_start, const at::Tensor& frob, double ridge_strength, int num_iter,
                  const at::Tensor& x, const at::Tensor& iterates) {
  switch (q.size(2)) {
    case 32:
      return launch_typed<32, Form>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates);
    case 64:
      return launch_typed<64, Form>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates);
    case 96:
      return launch_typed<96, Form>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates);
    case 128:
      return launch_typed<128, Form>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x,
                                      iterates);
    default:
      PRIME_CHECK(false, "gka_chunk_solve_bf16: D = ", q.size(2), " not served");
  }
}

}  // namespace

bool gka_chunk_solve_bf16_serves(int64_t C, int64_t D) {
  return C >= 1 && C <= 64 && D % 32 == 0 && D >= 32 && D <= 128;
}

size_t gka_chunk_solve_bf16_shared_bytes(int64_t C, int64_t D, int form) {
  return gka_bf16::Layout(static_cast<int>((C + 15) / 16 * 16), static_cast<int>(D), form).bytes;
}

void launch_gka_chunk_solve_bf16(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                 const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                                 double ridge_strength, int num_iter, const at::Tensor& x, const at::Tensor& iterates,
                                 bool bf16x3) {
  const int64_t C = q.size(1), D = q.size(2);
  PRIME_CHECK(gka_chunk_solve_bf16_serves(C, D), "gka_chunk_solve_bf16: C = ", C, ", D = ", D, " not served");
  const char* op = "gka_chunk_solve_bf16";  // q, keys and H_0 are read in pairs, x and the iterates written so
  check_aligned(q, op, "q", 8);
  check_aligned(keys, op, "keys", 8);
  check_aligned(start, op, "start", 8);
  check_aligned(x, op, "x", 8);
  if (iterates.defined()) check_aligned(iterates, op, "iterates", 8);
  if (bf16x3)
    launch_form<gka_bf16::kBf16x3>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates);
  else
    launch_form<gka_bf16::kBf16Form>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x,
                                     iterates);
}

}  // namespace prime::kernels::detail
