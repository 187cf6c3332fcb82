// CUDA kernel of the decode projection y = x Wᵀ (+ bias) for 1..4 rows of x (see linear_decode.h
// for the op, linear_decode_launch.h for the operands). Bound by reading W once: N·K elements
// against a few KB of x.
//
// Layout of the work: a warp owns kRows consecutive output features (rows of W) and computes them
// for every row of x. Its lanes walk the K dimension in 16-byte packs (8 bf16/fp16 or 4 fp32), a
// warp access covering 512 consecutive bytes of a W row; each trip issues kPacksInFlight raw
// 16-byte loads per lane (8 KB per warp) before using any of them, and W bypasses L1 (read once).
// x packs come through L1 (__ldg: every warp of a multiprocessor reads the same few KB) and each
// one meets the kRows W packs it multiplies. Sums are fp32, in two chains per (feature, x row) so
// a lane is not one long chain of dependent multiply-adds; a shuffle sum over the warp ends the
// row, the bias is added in fp32 and the result rounded once. 3 rows of x run the 4-row instance
// with the last row read twice and not stored.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common/cuda_check.cuh"
#include "kernels/linear_decode/linear_decode_launch.h"

namespace prime::kernels::detail {

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * kWarp;
// 16-byte loads of W per lane per trip: 8 KB in flight per warp.
constexpr int kPacksInFlight = 16;
// Blocks per multiprocessor the registers must allow: 4 (16 warps, 128 registers: 128 KB of W in
// flight per SM, several times what covers the memory latency at 4.8 TB/s); 3 for fp32, whose
// wider x packs spilled a few registers at 128.
template <typename T>
constexpr int kMinBlocks = sizeof(T) == 4 ? 3 : 4;
// Warps per multiprocessor below which a warp takes one feature instead of two (small N: the
// k/v projections of the 8B shape, N = 1024, get 1024 warps instead of 512).
constexpr int kWarpsPerSmForTwoRows = 8;

// The element types: fp32 of the words of a 16-byte pack, of one element, and the rounding back.
template <typename T>
struct Element;

template <>
struct Element<float> {
  static constexpr int kPerPack = 4;
  __device__ static float from_float(float value) { return value; }
  __device__ static float to_float(float value) { return value; }
};

// bf16 is the high half of an fp32: a shift or a mask per element.
template <>
struct Element<__nv_bfloat16> {
  static constexpr int kPerPack = 8;
  __device__ static float2 pair(uint32_t word) {
    return make_float2(__uint_as_float(word << 16), __uint_as_float(word & 0xffff0000u));
  }
  __device__ static __nv_bfloat16 from_float(float value) { return __float2bfloat16_rn(value); }
  __device__ static float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }
};

template <>
struct Element<__half> {
  static constexpr int kPerPack = 8;
  __device__ static float2 pair(uint32_t word) { return __half22float2(*reinterpret_cast<const __half2*>(&word)); }
  __device__ static __half from_float(float value) { return __float2half_rn(value); }
  __device__ static float to_float(__half value) { return __half2float(value); }
};

// A 16-byte pack as kPerPack floats (a 16-bit type's word holds two elements, the first in its
// low half).
template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float (&v)[Element<T>::kPerPack]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (Element<T>::kPerPack == 4) {
      v[j] = __uint_as_float(words[j]);
    } else {
      const float2 pair = Element<T>::pair(words[j]);
      v[2 * j] = pair.x;
      v[2 * j + 1] = pair.y;
    }
  }
}

// 16 bytes of W, read once: not kept in L1 (which holds x), not through the coherent path.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// acc[r][xr] += W pack of feature r · x pack of row xr, for the x packs at `pack`.
template <typename T, int kRows, int kXRows>
__device__ __forceinline__ void accumulate(const uint4 (&w)[kRows], const uint4* const (&x_row)[kXRows],
                                           int pack, float (&acc)[kRows][kXRows]) {
  constexpr int kWidth = Element<T>::kPerPack;
  float wf[kRows][kWidth];
#pragma unroll
  for (int r = 0; r < kRows; ++r) unpack<T>(w[r], wf[r]);
#pragma unroll
  for (int xr = 0; xr < kXRows; ++xr) {
    float xf[kWidth];
    unpack<T>(__ldg(x_row[xr] + pack), xf);
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kWidth; ++c) acc[r][xr] = fmaf(wf[r][c], xf[c], acc[r][xr]);
  }
}

// One warp per kRows features of W ([N, packs] in 16-byte packs), all kXRows rows of x
// ([x_rows, packs]; rows past x_rows read the last one and are not stored). out is [x_rows, N].
template <typename T, int kRows, int kXRows>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    linear_decode_kernel(const uint4* __restrict__ x, const uint4* __restrict__ weight,
                         const T* __restrict__ bias, T* __restrict__ out, int features, int packs,
                         int x_rows) {
  constexpr int kUnroll = kPacksInFlight / kRows;  // packs per feature per lane per trip
  constexpr int kTrip = kUnroll * kWarp;
  const int lane = threadIdx.x % kWarp;
  const int first = (blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp) * kRows;
  if (first >= features) return;  // whole warps only: no shuffle loses a lane
  // A feature past the end (odd N) reads the last one again and is not stored: no predicates
  // on the loads.
  const uint4* w_row[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    w_row[r] = weight + static_cast<int64_t>(min(first + r, features - 1)) * packs;
  const uint4* x_row[kXRows];
#pragma unroll
  for (int xr = 0; xr < kXRows; ++xr) x_row[xr] = x + static_cast<int64_t>(min(xr, x_rows - 1)) * packs;

  float acc[2][kRows][kXRows];  // two chains: even and odd packs of a trip
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int xr = 0; xr < kXRows; ++xr) acc[h][r][xr] = 0.f;

  int base = 0;
  for (; base + kTrip <= packs; base += kTrip) {
    uint4 w[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r) w[u][r] = load_streaming(w_row[r] + base + lane + u * kWarp);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      accumulate<T, kRows, kXRows>(w[u], x_row, base + lane + u * kWarp, acc[u % 2]);
  }
  if (base < packs) {  // the last, partial trip: fewer than kTrip packs left
    uint4 w[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int pack = base + lane + u * kWarp;
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        w[u][r] = pack < packs ? load_streaming(w_row[r] + pack) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int pack = base + lane + u * kWarp;
      if (pack < packs) accumulate<T, kRows, kXRows>(w[u], x_row, pack, acc[u % 2]);
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int xr = 0; xr < kXRows; ++xr) {
      float sum = acc[0][r][xr] + acc[1][r][xr];
#pragma unroll
      for (int offset = kWarp / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
      // Every lane holds every sum: lane r * kXRows + xr stores this one.
      const int feature = first + r;
      if (lane == r * kXRows + xr && xr < x_rows && feature < features) {
        if (bias != nullptr) sum += Element<T>::to_float(bias[feature]);
        out[static_cast<int64_t>(xr) * features + feature] = Element<T>::from_float(sum);
      }
    }
  }
}

bool aligned16(const at::Tensor& tensor) { return reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0; }

template <typename T, int kRows>
void launch_rows(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                 int features, int packs, int x_rows) {
  const int64_t warps = (static_cast<int64_t>(features) + kRows - 1) / kRows;
  const int blocks = static_cast<int>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const uint4* x_data = static_cast<const uint4*>(x.data_ptr());
  const uint4* w_data = static_cast<const uint4*>(weight.data_ptr());
  const T* bias_data = bias.defined() ? static_cast<const T*>(bias.data_ptr()) : nullptr;
  T* out_data = static_cast<T*>(out.data_ptr());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (x_rows == 1)
    linear_decode_kernel<T, kRows, 1><<<blocks, kThreads, 0, stream>>>(x_data, w_data, bias_data, out_data,
                                                                       features, packs, x_rows);
  else if (x_rows == 2)
    linear_decode_kernel<T, kRows, 2><<<blocks, kThreads, 0, stream>>>(x_data, w_data, bias_data, out_data,
                                                                       features, packs, x_rows);
  else
    linear_decode_kernel<T, kRows, 4><<<blocks, kThreads, 0, stream>>>(x_data, w_data, bias_data, out_data,
                                                                       features, packs, x_rows);
  PRIME_CUDA_CHECK_LAUNCH("linear_decode_kernel");
}

template <typename T>
void launch_typed(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out) {
  const int features = static_cast<int>(weight.size(0));
  const int packs = static_cast<int>(weight.size(1) / Element<T>::kPerPack);
  const int x_rows = static_cast<int>(x.size(0));
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // Two features per warp halve the x re-reads per W pack, once there are warps enough to keep
  // kWarpsPerSmForTwoRows per multiprocessor.
  if (static_cast<int64_t>(features) >= 2LL * kWarpsPerSmForTwoRows * sms)
    launch_rows<T, 2>(x, weight, bias, out, features, packs, x_rows);
  else
    launch_rows<T, 1>(x, weight, bias, out, features, packs, x_rows);
}

}  // namespace

void launch_linear_decode(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& out) {
  const char* op = "linear_decode";
  const at::ScalarType type = x.scalar_type();
  PRIME_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf, op,
              ": x must be fp32, bf16 or fp16, got ", c10::toString(type));
  check_operand(x, op, "x", type, 2);
  check_operand(weight, op, "weight", type, 2);
  check_operand(out, op, "out", type, 2);
  if (bias.defined()) check_operand(bias, op, "bias", type, 1);
  const int64_t rows = x.size(0), K = x.size(1), N = weight.size(0);
  const int64_t per_pack = 16 / static_cast<int64_t>(x.element_size());
  PRIME_CHECK(rows >= 1 && rows <= 4, op, ": x has ", rows, " rows, 1 to 4 are served");
  PRIME_CHECK(K >= 1 && K % per_pack == 0 && weight.size(1) == K, op, ": x ", x.sizes(), " and weight ",
              weight.sizes(), " (K a multiple of ", per_pack, ")");
  PRIME_CHECK(N >= 1 && N <= INT_MAX && K / per_pack <= INT_MAX, op, ": weight ", weight.sizes(),
              " exceeds the kernel's indexing");
  PRIME_CHECK(out.size(0) == rows && out.size(1) == N, op, ": out is ", out.sizes(), ", want [", rows, ", ",
              N, "]");
  PRIME_CHECK(!bias.defined() || bias.size(0) == N, op, ": bias ", bias.sizes(), " for ", N, " features");
  PRIME_CHECK(aligned16(x) && aligned16(weight), op, ": x and weight must start 16-byte aligned");
  for (const at::Tensor* t : {&weight, &bias, &out})
    PRIME_CHECK(!t->defined() || t->device() == x.device(), op, ": operands on ", t->device(), " and ",
                x.device());
  const at::cuda::CUDAGuard guard(x.device());
  if (type == at::kFloat) launch_typed<float>(x, weight, bias, out);
  else if (type == at::kBFloat16) launch_typed<__nv_bfloat16>(x, weight, bias, out);
  else launch_typed<__half>(x, weight, bias, out);
}

}  // namespace prime::kernels::detail
