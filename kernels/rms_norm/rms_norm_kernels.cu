// CUDA kernel of the fused RMSNorm (see rms_norm.h for the op, rms_norm_launch.h for the
// operands). Memory bound: each row is read once (x, or x and the residual) and written once (the
// output, and the sum), the weight re-read from L2. A row is split over a group of threads: a
// power-of-two group of lanes inside a warp for short rows (head norms, D = 128: shuffle sums
// only), a whole block for long ones (D = 4096: shuffle sums, then one shared-memory sum across the
// warps). Each thread keeps its first kHeldPacks 16-byte packs in registers between the sum of
// squares and the output, so nothing is read twice; packs beyond those (only rows longer than
// 4 x 1024 packs, i.e. scalar packs at D > 4096) are read again from L1/L2. All math is fp32,
// each rounding where model::rms_norm's ATen ops round.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/rms_norm/rms_norm_launch.h"
#include "kernels/rms_norm/rms_norm_rows.cuh"

namespace prime::kernels::detail {

namespace {

using namespace rms_norm_rows;

// The row's pack at `offset` as the kernel's source: x, or (fused add) to_T(fp32(x) + fp32(r)),
// stored to `sum` on the way when kStore.
template <typename T, int Width, bool kAdd, bool kStore = kAdd>
__device__ __forceinline__ Pack<Width> source_pack(const Bits<T>* x, const Bits<T>* residual,
                                                   Bits<T>* sum, int64_t offset) {
  Pack<Width> pack = load_pack<T, Width>(x + offset);
  if constexpr (kAdd) {
    const Pack<Width> r = load_pack<T, Width>(residual + offset);
#pragma unroll
    for (int c = 0; c < Width; ++c) pack.v[c] = rounded<T>(pack.v[c] + r.v[c]);
    if constexpr (kStore) store_pack<T, Width>(sum + offset, pack);
  }
  return pack;
}

template <int Width>
__device__ __forceinline__ float sum_of_squares(const Pack<Width>& pack) {
  float total = 0.f;
#pragma unroll
  for (int c = 0; c < Width; ++c) total += pack.v[c] * pack.v[c];
  return total;
}

// y = to_T(x * scale), out = to_T(fp32(w) * fp32(y)): model::rms_norm's two roundings.
template <typename T, int Width>
__device__ __forceinline__ void store_normed(Bits<T>* out, const Bits<T>* weight, int64_t offset,
                                             int pack_index, const Pack<Width>& source, float scale) {
  const Pack<Width> w = load_pack<T, Width>(weight + static_cast<int64_t>(pack_index) * Width);
  Pack<Width> result;
#pragma unroll
  for (int c = 0; c < Width; ++c) result.v[c] = w.v[c] * rounded<T>(source.v[c] * scale);
  store_pack<T, Width>(out + offset, result);
}

// kBlock: one row per block, blockDim.x (a multiple of 32) threads on it. Otherwise groups of
// `lanes` threads (a power of two <= 32) per row, blockDim.x / lanes rows per block. `packs` =
// D / Width.
template <typename T, int Width, bool kAdd, bool kBlock>
__global__ void __launch_bounds__(kMaxThreads)
    rms_norm_kernel(const Bits<T>* __restrict__ x, const Bits<T>* __restrict__ residual,
                    const Bits<T>* __restrict__ weight, Bits<T>* __restrict__ sum,
                    Bits<T>* __restrict__ out,
                    int rows, int packs, int lanes, float eps, float inverse_dim) {
  __shared__ float warp_sums[kMaxThreads / kWarp];
  pdl_wait();  // x and residual come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  const int lane = kBlock ? threadIdx.x : threadIdx.x % lanes;
  const int64_t row = kBlock ? blockIdx.x
                             : static_cast<int64_t>(blockIdx.x) * (blockDim.x / lanes) + threadIdx.x / lanes;
  const bool active = row < rows;  // groups past the last row still join the shuffles
  const int64_t row_offset = row * packs * Width;
  const Bits<T>* x_row = x + row_offset;
  const Bits<T>* residual_row = kAdd ? residual + row_offset : nullptr;
  Bits<T>* sum_row = kAdd ? sum + row_offset : nullptr;
  Bits<T>* out_row = out + row_offset;

  Pack<Width> held[kHeldPacks];
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < kHeldPacks; ++i) {
    const int p = lane + i * lanes;
    if (active && p < packs) {
      held[i] = source_pack<T, Width, kAdd>(x_row, residual_row, sum_row, static_cast<int64_t>(p) * Width);
      squares += sum_of_squares<Width>(held[i]);
    }
  }
  for (int p = lane + kHeldPacks * lanes; active && p < packs; p += lanes)
    squares += sum_of_squares<Width>(
        source_pack<T, Width, kAdd>(x_row, residual_row, sum_row, static_cast<int64_t>(p) * Width));

  if constexpr (kBlock) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2)
      squares += __shfl_xor_sync(0xffffffffu, squares, offset);
    if (threadIdx.x % kWarp == 0) warp_sums[threadIdx.x / kWarp] = squares;
    __syncthreads();
    squares = 0.f;  // every thread sums the warps in one order: one scale per row
    for (int w = 0; w < static_cast<int>(blockDim.x / kWarp); ++w) squares += warp_sums[w];
  } else {
    for (int offset = lanes / 2; offset > 0; offset /= 2)
      squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  }
  if (!active) return;
  // mean as ATen's CUDA mean (sum times 1/D), + eps in fp32, rsqrt.
  const float scale = rsqrtf(squares * inverse_dim + eps);

#pragma unroll
  for (int i = 0; i < kHeldPacks; ++i) {
    const int p = lane + i * lanes;
    if (p < packs)
      store_normed<T, Width>(out_row, weight, static_cast<int64_t>(p) * Width, p, held[i], scale);
  }
  // Packs not held: the source again from the read-only inputs (the sum recomputed, not stored).
  for (int p = lane + kHeldPacks * lanes; p < packs; p += lanes) {
    const int64_t offset = static_cast<int64_t>(p) * Width;
    store_normed<T, Width>(out_row, weight, offset, p,
                           source_pack<T, Width, kAdd, false>(x_row, residual_row, sum_row, offset), scale);
  }
}

template <typename T, bool kAdd>
void launch_typed(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                  double eps, const at::Tensor& sum, const at::Tensor& out) {
  using B = Bits<T>;
  constexpr int kVector = 16 / sizeof(B);
  const int D = static_cast<int>(x.size(-1));
  const int rows = static_cast<int>(x.numel() / D);
  const bool vector = D % kVector == 0 && aligned16(x) && aligned16(residual) && aligned16(weight) &&
                      aligned16(sum) && aligned16(out);
  const auto launch = [&](auto width) {
    constexpr int kWidth = decltype(width)::value;
    const int packs = D / kWidth;
    const B* x_data = static_cast<const B*>(x.data_ptr());
    const B* residual_data = kAdd ? static_cast<const B*>(residual.data_ptr()) : nullptr;
    const B* weight_data = static_cast<const B*>(weight.data_ptr());
    B* sum_data = kAdd ? static_cast<B*>(sum.data_ptr()) : nullptr;
    B* out_data = static_cast<B*>(out.data_ptr());
    const float inverse_dim = 1.f / static_cast<float>(D);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    if (packs <= kMaxGroupPacks) {
      // One pack per lane up to a warp, then up to kHeldPacks each.
      const int lanes = std::min(kWarp, next_power_of_two(packs));
      const int rows_per_block = kGroupThreads / lanes;
      const int blocks = (rows + rows_per_block - 1) / rows_per_block;
      launch_kernel("rms_norm_kernel", rms_norm_kernel<T, kWidth, kAdd, false>, blocks, kGroupThreads, 0, stream,
          x_data, residual_data, weight_data, sum_data, out_data, rows, packs, lanes,
          static_cast<float>(eps), inverse_dim);
    } else {
      // About two packs per thread (D = 4096 bf16: 256 threads), at most 1024 threads.
      const int threads = std::min(kMaxThreads, round_up((packs + 1) / 2, kWarp));
      launch_kernel("rms_norm_kernel", rms_norm_kernel<T, kWidth, kAdd, true>, rows, threads, 0, stream,
          x_data, residual_data, weight_data, sum_data, out_data, rows, packs, threads,
          static_cast<float>(eps), inverse_dim);
    }
  };
  if (vector) launch(std::integral_constant<int, kVector>{});
  else launch(std::integral_constant<int, 1>{});
}

}  // namespace

void launch_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                     double eps, const at::Tensor& sum, const at::Tensor& out) {
  const char* op = "rms_norm";
  const at::ScalarType type = x.scalar_type();
  PRIME_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf, op,
              ": x must be fp32, bf16 or fp16, got ", c10::toString(type));
  PRIME_CHECK(x.dim() >= 1, op, ": x has no dimensions");
  check_operand(x, op, "x", type, x.dim());
  check_operand(out, op, "out", type, x.dim());
  check_operand(weight, op, "weight", type, 1);
  const bool add = residual.defined();
  PRIME_CHECK(add == sum.defined(), op, ": residual and sum go together");
  if (add) {
    check_operand(residual, op, "residual", type, x.dim());
    check_operand(sum, op, "sum", type, x.dim());
    PRIME_CHECK(residual.sizes() == x.sizes() && sum.sizes() == x.sizes(), op, ": residual ",
                residual.sizes(), " and sum ", sum.sizes(), " must be x's ", x.sizes());
  }
  const int64_t D = x.size(-1);
  PRIME_CHECK(out.sizes() == x.sizes(), op, ": out is ", out.sizes(), ", x ", x.sizes());
  PRIME_CHECK(D >= 1 && D <= 16384 && weight.size(0) == D, op, ": weight ", weight.sizes(),
              " for rows of ", D);
  for (const at::Tensor* t : {&residual, &weight, &sum, &out})
    PRIME_CHECK(!t->defined() || t->device() == x.device(), op, ": operands on ", t->device(),
                " and ", x.device());
  PRIME_CHECK(x.numel() / D <= INT_MAX, op, ": ", x.numel() / D, " rows exceed the grid");
  if (x.numel() == 0) return;
  const at::cuda::CUDAGuard guard(x.device());
  const auto dispatch = [&](auto tag) {
    using T = decltype(tag);
    if (add) launch_typed<T, true>(x, residual, weight, eps, sum, out);
    else launch_typed<T, false>(x, residual, weight, eps, sum, out);
  };
  if (type == at::kFloat) dispatch(float{});
  else if (type == at::kBFloat16) dispatch(__nv_bfloat16{});
  else dispatch(__half{});
}

}  // namespace prime::kernels::detail
