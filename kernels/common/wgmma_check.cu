// wgmma_product (wgmma_check.h): a and b copied into shared memory in the swizzled layout, one
// product by the warpgroup MMAs, the accumulator written out.
#include "kernels/common/wgmma_check.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/ldmatrix.cuh"
#include "kernels/common/wgmma.cuh"
#include "util/error.h"

namespace prime::kernels {

namespace {

using Bf16 = __nv_bfloat16;
constexpr int kMaxDepth = 128, kMaxWidth = 128;

struct Params {
  const Bf16 *a, *b;
  float* out;
  int K, W, col0;
};

// A from registers, or by descriptor K-major (a's rows stored) or MN-major (a^T's rows stored: the
// MMA's transposed A).
enum class AFrom { registers, k_major, mn_major };

template <AFrom From, bool BMnMajor>
__global__ void __launch_bounds__(128, 1) product_kernel(const Params p) {
  using namespace detail::wgmma;
  extern __shared__ __align__(1024) unsigned char smem[];
  unsigned char* a_sw = align_1024(smem);
  unsigned char* b_sw = a_sw + kMaxDepth * kMaxWidth * 2;
  const int K = p.K, W = p.W;
  for (int i = threadIdx.x; i < 64 * K; i += 128) {
    const int m = i / K, k = i % K;
    // MN-major: a^T's rows, at columns col0 .. of a [K, 128] matrix (the second panel when col0 is 64)
    const uint32_t at = From == AFrom::mn_major ? sw128_offset(k, p.col0 + m, K) : sw128_offset(m, k, 64);
    *reinterpret_cast<Bf16*>(a_sw + at) = p.a[i];
  }
  for (int i = threadIdx.x; i < K * W; i += 128) {
    const int k = i / W, n = i % W;  // b[k][n]: MN-major stores b's rows, K-major b^T's
    const uint32_t at = BMnMajor ? sw128_offset(k, n, K) : sw128_offset(n, k, W);
    *reinterpret_cast<Bf16*>(b_sw + at) = p.b[i];
  }
  fence_proxy_async();
  __syncthreads();
  const uint32_t a_base = detail::shared_address(a_sw), b_base = detail::shared_address(b_sw);
  float d[32];
#pragma unroll
  for (int e = 0; e < 32; ++e) d[e] = 0.0f;
  for (int s = 0; s < K / 16; ++s) {
    const uint64_t b = BMnMajor ? mn_major(b_base, K, 16 * s, p.col0) : k_major(b_base, W, p.col0, 16 * s);
    if constexpr (From == AFrom::registers) {
      uint32_t a[4];
      for (int r = 0; r < 4; ++r) {
        const int row = accumulator_row(2 * r), col = 16 * s + 8 * (r / 2) + 2 * (threadIdx.x % 4);
        const __nv_bfloat162 pair = __halves2bfloat162(p.a[row * K + col], p.a[row * K + col + 1]);
        a[r] = *reinterpret_cast<const uint32_t*>(&pair);
      }
      fence();  // each step's batch: its registers (d, a) were written since the last
      mma_rs<BMnMajor>(d, a, b, s > 0);
    } else if constexpr (From == AFrom::k_major) {
      fence();
      mma_ss<BMnMajor>(d, k_major(a_base, 64, 0, 16 * s), b, s > 0);
    } else {
      fence();
      mma_ss<BMnMajor, true>(d, mn_major(a_base, K, 16 * s, p.col0), b, s > 0);
    }
    commit();
    wait<0>();
    fence_operands(d);
  }
#pragma unroll
  for (int e = 0; e < 32; ++e) p.out[accumulator_row(e) * 64 + accumulator_col(e)] = d[e];
}

void launch(const Params& p, AFrom from, bool b_mn_major) {
  const size_t bytes = 1024 + 2 * kMaxDepth * kMaxWidth * 2;
  const auto run = [&](auto kernel) {
    PRIME_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    kernel<<<1, 128, bytes, at::cuda::getCurrentCUDAStream()>>>(p);
    PRIME_CUDA_CHECK_LAUNCH("wgmma_product");
  };
  switch (from) {
    case AFrom::registers:
      return b_mn_major ? run(product_kernel<AFrom::registers, true>) : run(product_kernel<AFrom::registers, false>);
    case AFrom::k_major:
      return b_mn_major ? run(product_kernel<AFrom::k_major, true>) : run(product_kernel<AFrom::k_major, false>);
    case AFrom::mn_major:
      return b_mn_major ? run(product_kernel<AFrom::mn_major, true>) : run(product_kernel<AFrom::mn_major, false>);
  }
}

}  // namespace

at::Tensor wgmma_product(const at::Tensor& a, const at::Tensor& b, int64_t col0, bool a_in_registers, bool b_mn_major,
                         bool a_mn_major) {
  const char* op = "wgmma_product";
  PRIME_CHECK(a.is_cuda() && a.scalar_type() == at::kBFloat16 && a.dim() == 2 && a.size(0) == 64 && a.is_contiguous(),
              op, ": a must be a contiguous bf16 CUDA [64, K]");
  const int64_t K = a.size(1);
  PRIME_CHECK(K >= 16 && K <= kMaxDepth && K % 16 == 0, op, ": depth ", K);
  PRIME_CHECK(b.is_cuda() && b.device() == a.device() && b.scalar_type() == at::kBFloat16 && b.dim() == 2 &&
                  b.size(0) == K && b.is_contiguous(),
              op, ": b must be a contiguous bf16 [K, W] on a's device");
  const int64_t W = b.size(1);
  PRIME_CHECK(W % 64 == 0 && W <= kMaxWidth && col0 % 64 == 0 && col0 >= 0 && col0 + 64 <= W, op, ": width ", W,
              ", col0 ", col0);
  PRIME_CHECK(!(a_in_registers && a_mn_major), op, ": an A in registers has no major order");
  PRIME_CHECK(at::cuda::getDeviceProperties(a.get_device())->major == 9, op, ": needs a Hopper GPU (sm_90)");
  const at::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({64, 64}, a.options().dtype(at::kFloat));
  const Params p{reinterpret_cast<const Bf16*>(a.data_ptr()), reinterpret_cast<const Bf16*>(b.data_ptr()),
                 out.data_ptr<float>(), static_cast<int>(K), static_cast<int>(W), static_cast<int>(col0)};
  launch(p, a_in_registers ? AFrom::registers : a_mn_major ? AFrom::mn_major : AFrom::k_major, b_mn_major);
  return out;
}

}  // namespace prime::kernels
