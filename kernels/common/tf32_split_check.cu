// tf32_split_mismatches (tf32_split_check.h): each value split both ways in one thread.
#include "kernels/common/tf32_split_check.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/tf32_split.cuh"
#include "util/error.h"

namespace prime::kernels {

namespace {

constexpr uint32_t kTf32Bits = 0xffffe000u;

__device__ __forceinline__ uint32_t cvt_rna_tf32(float value) {
  uint32_t out;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(out) : "f"(value));
  return out & kTf32Bits;
}

__global__ void count_mismatches(const float* __restrict__ values, int64_t n, unsigned long long* mismatches) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float value = values[i];
    uint32_t hi, lo;
    detail::split_tf32_bits(__float_as_uint(value), hi, lo);
    const uint32_t want_hi = cvt_rna_tf32(value);
    const uint32_t want_lo = cvt_rna_tf32(value - __uint_as_float(want_hi));
    if (hi != want_hi || (lo & kTf32Bits) != want_lo) atomicAdd(mismatches, 1ull);
  }
}

}  // namespace

int64_t tf32_split_mismatches(const at::Tensor& values) {
  PRIME_CHECK(values.is_cuda() && values.scalar_type() == at::kFloat, "tf32_split_mismatches: values must be an ",
              "fp32 CUDA tensor, not ", values.toString());
  const at::cuda::CUDAGuard guard(values.device());
  const at::Tensor flat = values.contiguous().view({-1});
  const at::Tensor count = at::zeros({1}, flat.options().dtype(at::kLong));
  const int64_t n = flat.numel();
  if (n > 0) {
    const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 4096));
    count_mismatches<<<blocks, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        flat.data_ptr<float>(), n, reinterpret_cast<unsigned long long*>(count.data_ptr<int64_t>()));
    PRIME_CUDA_CHECK_LAUNCH("count_mismatches");
  }
  return count.item<int64_t>();
}

}  // namespace prime::kernels
