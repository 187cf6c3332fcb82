// CUDA kernel of the decoder-block RMSNorm's backward (see rms_norm.h, rms_norm_train). With
// xf = fp32(x), s = rsqrt(mean(xf^2) + eps), n = to_T(xf s) and y = w n (model::rms_norm's torch
// form), autograd of that form computes
//   g = to_T(dy w)                                   (the product's gradient, in x's dtype)
//   dx = to_T(s g - xf s^3 (sum_j g_j xf_j) / D)     (the fp32 normalisation's gradient)
// and, for the weight, dw = sum over rows of to_T(dy n). One pass per row: x, dy and w are read
// once (x and g kept in registers between the two row sums and the output, as the forward keeps
// x), dx is written once, and n too where the weight's gradient is wanted (its row sum is one ATen
// reduction in the wrapper). s is recomputed from x: nothing is saved by the forward but x.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "kernels/common/cuda_check.cuh"
#include "kernels/rms_norm/rms_norm_launch.h"
#include "kernels/rms_norm/rms_norm_rows.cuh"

namespace prime::kernels::detail {

namespace {

using namespace rms_norm_rows;

// At most 512 threads per row (the forward allows 1024): a thread holds x and g, twice the
// forward's registers, and 512-thread blocks leave it 128 of them (no spills at 16-bit packs).
constexpr int kBackwardMaxThreads = 512;

// The pack's g = to_T(dy w) and its contributions to the two row sums.
template <typename T, int Width>
__device__ __forceinline__ Pack<Width> gradient_pack(const Bits<T>* dy_row, const Bits<T>* weight, int pack_index,
                                                     const Pack<Width>& x, float& squares, float& dot) {
  const int64_t offset = static_cast<int64_t>(pack_index) * Width;
  const Pack<Width> dy = load_pack<T, Width>(dy_row + offset);
  const Pack<Width> w = load_pack<T, Width>(weight + offset);
  Pack<Width> g;
#pragma unroll
  for (int c = 0; c < Width; ++c) {
    g.v[c] = rounded<T>(dy.v[c] * w.v[c]);
    squares += x.v[c] * x.v[c];
    dot += g.v[c] * x.v[c];
  }
  return g;
}

// dx (and n where wanted) of one pack, from the row's s and coefficient s^3 dot / D.
template <typename T, int Width>
__device__ __forceinline__ void store_gradient(Bits<T>* dx_row, Bits<T>* normed_row, int64_t offset,
                                               const Pack<Width>& x, const Pack<Width>& g, float scale,
                                               float coefficient) {
  Pack<Width> dx;
#pragma unroll
  for (int c = 0; c < Width; ++c) dx.v[c] = scale * g.v[c] - x.v[c] * coefficient;
  store_pack<T, Width>(dx_row + offset, dx);
  if (normed_row) {
    Pack<Width> n;
#pragma unroll
    for (int c = 0; c < Width; ++c) n.v[c] = x.v[c] * scale;
    store_pack<T, Width>(normed_row + offset, n);
  }
}

// Rows as in the forward (rms_norm_kernels.cu): kBlock, one row per block; otherwise groups of
// `lanes` threads per row. normed may be null.
template <typename T, int Width, bool kBlock>
__global__ void __launch_bounds__(kBackwardMaxThreads)
    rms_norm_backward_kernel(const Bits<T>* __restrict__ x, const Bits<T>* __restrict__ dy,
                             const Bits<T>* __restrict__ weight, Bits<T>* __restrict__ dx,
                             Bits<T>* __restrict__ normed, int rows, int packs, int lanes, float eps,
                             float inverse_dim) {
  __shared__ float warp_squares[kBackwardMaxThreads / kWarp];
  __shared__ float warp_dots[kBackwardMaxThreads / kWarp];
  const int lane = kBlock ? threadIdx.x : threadIdx.x % lanes;
  const int64_t row = kBlock ? blockIdx.x
                             : static_cast<int64_t>(blockIdx.x) * (blockDim.x / lanes) + threadIdx.x / lanes;
  const bool active = row < rows;  // groups past the last row still join the shuffles
  const int64_t row_offset = row * packs * Width;
  const Bits<T>* x_row = x + row_offset;
  const Bits<T>* dy_row = dy + row_offset;
  Bits<T>* dx_row = dx + row_offset;
  Bits<T>* normed_row = normed ? normed + row_offset : nullptr;

  Pack<Width> held_x[kHeldPacks], held_g[kHeldPacks];
  float squares = 0.f, dot = 0.f;
#pragma unroll
  for (int i = 0; i < kHeldPacks; ++i) {
    const int p = lane + i * lanes;
    if (active && p < packs) {
      held_x[i] = load_pack<T, Width>(x_row + static_cast<int64_t>(p) * Width);
      held_g[i] = gradient_pack<T, Width>(dy_row, weight, p, held_x[i], squares, dot);
    }
  }
  for (int p = lane + kHeldPacks * lanes; active && p < packs; p += lanes)
    gradient_pack<T, Width>(dy_row, weight, p, load_pack<T, Width>(x_row + static_cast<int64_t>(p) * Width),
                            squares, dot);

  if constexpr (kBlock) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      squares += __shfl_xor_sync(0xffffffffu, squares, offset);
      dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    }
    if (threadIdx.x % kWarp == 0) {
      warp_squares[threadIdx.x / kWarp] = squares;
      warp_dots[threadIdx.x / kWarp] = dot;
    }
    __syncthreads();
    squares = 0.f, dot = 0.f;  // every thread sums the warps in one order
    for (int w = 0; w < static_cast<int>(blockDim.x / kWarp); ++w) squares += warp_squares[w], dot += warp_dots[w];
  } else {
    for (int offset = lanes / 2; offset > 0; offset /= 2) {
      squares += __shfl_xor_sync(0xffffffffu, squares, offset);
      dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    }
  }
  if (!active) return;
  const float scale = rsqrtf(squares * inverse_dim + eps);
  const float coefficient = scale * scale * scale * dot * inverse_dim;

#pragma unroll
  for (int i = 0; i < kHeldPacks; ++i) {
    const int p = lane + i * lanes;
    if (p < packs)
      store_gradient<T, Width>(dx_row, normed_row, static_cast<int64_t>(p) * Width, held_x[i], held_g[i], scale,
                               coefficient);
  }
  for (int p = lane + kHeldPacks * lanes; p < packs; p += lanes) {
    const int64_t offset = static_cast<int64_t>(p) * Width;
    const Pack<Width> xp = load_pack<T, Width>(x_row + offset);
    float unused_squares = 0.f, unused_dot = 0.f;
    const Pack<Width> gp = gradient_pack<T, Width>(dy_row, weight, p, xp, unused_squares, unused_dot);
    store_gradient<T, Width>(dx_row, normed_row, offset, xp, gp, scale, coefficient);
  }
}

template <typename T>
void launch_typed(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& weight, double eps,
                  const at::Tensor& dx, const at::Tensor& normed) {
  using B = Bits<T>;
  constexpr int kVector = 16 / sizeof(B);
  const int D = static_cast<int>(x.size(-1));
  const int rows = static_cast<int>(x.numel() / D);
  const bool vector = D % kVector == 0 && aligned16(x) && aligned16(dy) && aligned16(weight) && aligned16(dx) &&
                      aligned16(normed);
  const auto launch = [&](auto width) {
    constexpr int kWidth = decltype(width)::value;
    const int packs = D / kWidth;
    const B* x_data = static_cast<const B*>(x.data_ptr());
    const B* dy_data = static_cast<const B*>(dy.data_ptr());
    const B* weight_data = static_cast<const B*>(weight.data_ptr());
    B* dx_data = static_cast<B*>(dx.data_ptr());
    B* normed_data = normed.defined() ? static_cast<B*>(normed.data_ptr()) : nullptr;
    const float inverse_dim = 1.f / static_cast<float>(D);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    if (packs <= kMaxGroupPacks) {
      const int lanes = std::min(kWarp, next_power_of_two(packs));
      const int rows_per_block = kGroupThreads / lanes;
      const int blocks = (rows + rows_per_block - 1) / rows_per_block;
      rms_norm_backward_kernel<T, kWidth, false><<<blocks, kGroupThreads, 0, stream>>>(
          x_data, dy_data, weight_data, dx_data, normed_data, rows, packs, lanes, static_cast<float>(eps),
          inverse_dim);
    } else {
      const int threads = std::min(kBackwardMaxThreads, round_up((packs + 1) / 2, kWarp));
      rms_norm_backward_kernel<T, kWidth, true><<<rows, threads, 0, stream>>>(
          x_data, dy_data, weight_data, dx_data, normed_data, rows, packs, threads, static_cast<float>(eps),
          inverse_dim);
    }
  };
  if (vector) launch(std::integral_constant<int, kVector>{});
  else launch(std::integral_constant<int, 1>{});
  PRIME_CUDA_CHECK_LAUNCH("rms_norm_backward_kernel");
}

}  // namespace

void launch_rms_norm_backward(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& weight, double eps,
                              const at::Tensor& dx, const at::Tensor& normed) {
  const char* op = "rms_norm_backward";
  const at::ScalarType type = x.scalar_type();
  PRIME_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf, op,
              ": x must be fp32, bf16 or fp16, got ", c10::toString(type));
  PRIME_CHECK(x.dim() >= 1, op, ": x has no dimensions");
  check_operand(x, op, "x", type, x.dim());
  check_operand(dy, op, "dy", type, x.dim());
  check_operand(dx, op, "dx", type, x.dim());
  check_operand(weight, op, "weight", type, 1);
  if (normed.defined()) check_operand(normed, op, "normed", type, x.dim());
  const int64_t D = x.size(-1);
  PRIME_CHECK(dy.sizes() == x.sizes() && dx.sizes() == x.sizes() && (!normed.defined() || normed.sizes() == x.sizes()),
              op, ": dy ", dy.sizes(), ", dx ", dx.sizes(), " must be x's ", x.sizes());
  PRIME_CHECK(D >= 1 && D <= 16384 && weight.size(0) == D, op, ": weight ", weight.sizes(), " for rows of ", D);
  for (const at::Tensor* t : {&dy, &weight, &dx, &normed})
    PRIME_CHECK(!t->defined() || t->device() == x.device(), op, ": operands on ", t->device(), " and ", x.device());
  PRIME_CHECK(x.numel() / D <= INT_MAX, op, ": ", x.numel() / D, " rows exceed the grid");
  if (x.numel() == 0) return;
  const at::cuda::CUDAGuard guard(x.device());
  if (type == at::kFloat) launch_typed<float>(x, dy, weight, eps, dx, normed);
  else if (type == at::kBFloat16) launch_typed<__nv_bfloat16>(x, dy, weight, eps, dx, normed);
  else launch_typed<__half>(x, dy, weight, eps, dx, normed);
}

}  // namespace prime::kernels::detail
