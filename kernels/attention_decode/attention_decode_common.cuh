// Pieces shared by the two split-K decode attention kernels (attention_decode_kernels.cu: fp32 on
// the CUDA cores; attention_decode_mma.cu: bf16 on the tensor cores): the cp.async staging, the
// ranges of slots each block takes, the merge of a block's warps into the output or a range's
// partial softmax state, and the kernel that merges the ranges.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"

namespace prime::kernels::detail {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;

// 16 bytes global -> shared without registers (cp.async, sm_80+); zero-filled when !fill.
__device__ __forceinline__ void copy_async16(void* shared, const void* global, bool fill) {
  const unsigned destination = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(destination), "l"(global), "r"(fill ? 16 : 0));
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int Pending>
__device__ __forceinline__ void copy_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending)); }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float(float value) { return __float2bfloat16_rn(value); }
template <>
__device__ __forceinline__ float from_float(float value) { return value; }

// The max of a running softmax state, as the reference exponent: 0 while nothing is seen (every
// exp2(-inf - 0) is then 0 and no -inf - -inf arises).
__device__ __forceinline__ float reference(float max) { return max == -INFINITY ? 0.0f : max; }

// After a __syncthreads: merges the block's warps, whose states are in shared memory (max m and
// sum l [kWarps][G], unnormalised output acc [kWarps][G][D], base-2 units), for the `groups`
// query heads of (sequence, KV head) `sequence_head`. With one range the block writes the output
// rows; otherwise the range's (max, sum) and unnormalised output go to the workspace.
template <typename T, int D, int G>
__device__ __forceinline__ void store_block_result(const float* m, const float* l, const float* acc,
                                                   int groups, long long sequence_head, int split,
                                                   int splits, float* __restrict__ part_acc,
                                                   float* __restrict__ part_ml, T* __restrict__ out) {
  for (int i = threadIdx.x; i < groups * D; i += blockDim.x) {
    const int g = i / D, d = i % D;
    float top = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) top = fmaxf(top, m[w * G + g]);
    const float ref = reference(top);
    float sum = 0.0f, total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float weight = exp2f(m[w * G + g] - ref);
      sum += l[w * G + g] * weight;
      total += acc[(w * G + g) * D + d] * weight;
    }
    const long long row = sequence_head * groups + g;  // the query head's row of [B * Hq]
    if (splits == 1) {
      out[row * D + d] = from_float<T>(sum > 0.0f ? total / sum : 0.0f);
    } else {
      part_acc[(row * splits + split) * D + d] = total;
      if (d == 0) {
        part_ml[(row * splits + split) * 2] = top;
        part_ml[(row * splits + split) * 2 + 1] = sum;
      }
    }
  }
}

// One block of D threads per query head row: merges the ranges' partial softmax states.
template <typename T>
__global__ void attention_decode_combine_kernel(const float* __restrict__ part_acc,
                                                const float* __restrict__ part_ml, T* __restrict__ out,
                                                int splits, int D) {
  pdl_wait();  // the ranges' partial states come from the kernel before (pdl.cuh)
  pdl_launch_dependents();
  const long long row = blockIdx.x;
  const int d = threadIdx.x;
  const float* ml = part_ml + row * splits * 2;
  float top = -INFINITY;
  for (int s = 0; s < splits; ++s) top = fmaxf(top, ml[2 * s]);
  const float ref = reference(top);
  float sum = 0.0f, total = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float weight = exp2f(ml[2 * s] - ref);
    sum += ml[2 * s + 1] * weight;
    total += part_acc[(row * splits + s) * D + d] * weight;
  }
  out[row * D + d] = from_float<T>(sum > 0.0f ? total / sum : 0.0f);
}

// How the S slots of each (sequence, KV head) are split into ranges: about `blocks_per_sm` blocks
// per multiprocessor in all, each range at least 128 slots (the merge is then small next to the
// streaming) and a multiple of what a block reads per trip.
struct Ranges {
  int64_t splits = 1, keys_per_split = 1;
  at::Tensor part_acc, part_ml;  // the ranges' partial states (splits > 1)
};

inline Ranges plan_ranges(const at::Tensor& q, int64_t B, int64_t Hkv, int64_t S, int64_t D,
                          int64_t per_trip, int64_t blocks_per_sm) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = std::max<int64_t>(1, (blocks_per_sm * sms + B * Hkv - 1) / (B * Hkv));
  const int64_t most = std::max<int64_t>(1, (S + 127) / 128);
  Ranges ranges;
  ranges.splits = std::min(wanted, most);
  int64_t keys_per_split = (S + ranges.splits - 1) / ranges.splits;
  ranges.keys_per_split = (keys_per_split + per_trip - 1) / per_trip * per_trip;
  ranges.splits = (S + ranges.keys_per_split - 1) / ranges.keys_per_split;
  PRIME_CHECK(ranges.splits <= 65535 && Hkv <= 65535 && B <= 65535, "attention_decode: grid too large (B ", B,
              ", Hkv ", Hkv, ", ranges ", ranges.splits, ")");
  if (ranges.splits > 1) {
    ranges.part_acc = at::empty({B * q.size(1), ranges.splits, D}, q.options().dtype(at::kFloat));
    ranges.part_ml = at::empty({B * q.size(1), ranges.splits, 2}, q.options().dtype(at::kFloat));
  }
  return ranges;
}

// With several ranges: the second kernel, merging them into out [B * Hq, D].
template <typename T>
void combine_ranges(const Ranges& ranges, const at::Tensor& out, int64_t rows, int64_t D, cudaStream_t stream) {
  if (ranges.splits == 1) return;
  launch_kernel("attention_decode_combine_kernel", attention_decode_combine_kernel<T>, static_cast<unsigned>(rows),
                static_cast<unsigned>(D), 0, stream, ranges.part_acc.const_data_ptr<float>(),
                ranges.part_ml.const_data_ptr<float>(), reinterpret_cast<T*>(out.mutable_data_ptr()),
                static_cast<int>(ranges.splits), static_cast<int>(D));
}

}  // namespace

}  // namespace prime::kernels::detail
