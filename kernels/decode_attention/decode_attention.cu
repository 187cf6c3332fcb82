// Two kernels: per (split of the slots, kv head, sequence) a block of 4 warps walks its slots, one
// warp per slot at a time, lanes across the head dim; each warp keeps an online softmax per query
// head of the group, the block merges its warps and writes an unnormalised partial result; a second
// kernel merges the splits. Inputs are read once: each K/V row by one warp, for all G query heads.
#include "kernels/decode_attention/decode_attention.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "util/error.h"

namespace prime::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxGroups = 8;

__device__ inline float warp_sum(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// kPerLane = ceil(D / 32) elements of a row per lane (lane l holds [l * kPerLane, (l+1) * kPerLane));
// kGroups >= groups, a compile-time bound so that the per-group arrays stay in registers.
template <typename scalar_t, int kPerLane, int kGroups>
__global__ void __launch_bounds__(kWarps * 32)
    split_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ keys,
                 const scalar_t* __restrict__ values, const int64_t* __restrict__ slot_positions,
                 const int64_t* __restrict__ position, float* __restrict__ partial, float* __restrict__ partial_max,
                 float* __restrict__ partial_sum, int slots, int kv_heads, int groups, int dim, int slots_per_split,
                 int64_t window, int64_t sinks, float scale) {
  const int split = blockIdx.x, kv_head = blockIdx.y, batch = blockIdx.z;
  const int splits = gridDim.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t now = *position;
  const int q_heads = kv_heads * groups;

  float query[kGroups][kPerLane];
  float acc[kGroups][kPerLane];
  float running_max[kGroups], running_sum[kGroups];
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    if (g >= groups) break;
    const scalar_t* row = q + (static_cast<int64_t>(batch) * q_heads + kv_head * groups + g) * dim;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane * kPerLane + i;
      query[g][i] = d < dim ? static_cast<float>(row[d]) * scale : 0.f;
      acc[g][i] = 0.f;
    }
    running_max[g] = -INFINITY;
    running_sum[g] = 0.f;
  }
  const int64_t base = (static_cast<int64_t>(batch) * kv_heads + kv_head) * slots;
  const int first = split * slots_per_split, last = min(slots, first + slots_per_split);
  for (int slot = first + warp; slot < last; slot += kWarps) {
    const int64_t held = slot_positions[slot];
    bool visible = held >= 0 && held <= now;
    if (window > 0) visible = visible && (now - held < window || held < sinks);
    if (!visible) continue;  // the same for the whole warp
    const scalar_t* key = keys + (base + slot) * dim;
    const scalar_t* value = values + (base + slot) * dim;
    float k_part[kPerLane], v_part[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane * kPerLane + i;
      k_part[i] = d < dim ? static_cast<float>(key[d]) : 0.f;
      v_part[i] = d < dim ? static_cast<float>(value[d]) : 0.f;
    }
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      if (g >= groups) break;
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) dot += query[g][i] * k_part[i];
      const float score = warp_sum(dot);
      const float new_max = fmaxf(running_max[g], score);
      const float rescale = __expf(running_max[g] - new_max);  // 0 while nothing was seen
      const float weight = __expf(score - new_max);
      running_sum[g] = running_sum[g] * rescale + weight;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc[g][i] = acc[g][i] * rescale + weight * v_part[i];
      running_max[g] = new_max;
    }
  }
  // Merge the warps: each publishes (max, sum, acc) per group; the block combines them.
  extern __shared__ float shared[];
  float* warp_max = shared;                           // [kWarps][groups]
  float* warp_sum_ = warp_max + kWarps * groups;      // [kWarps][groups]
  float* warp_acc = warp_sum_ + kWarps * groups;      // [kWarps][groups][32 * kPerLane]
  const int width = 32 * kPerLane;
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    if (g >= groups) break;
    if (lane == 0) {
      warp_max[warp * groups + g] = running_max[g];
      warp_sum_[warp * groups + g] = running_sum[g];
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) warp_acc[(warp * groups + g) * width + lane * kPerLane + i] = acc[g][i];
  }
  __syncthreads();
  for (int item = threadIdx.x; item < groups * dim; item += blockDim.x) {
    const int g = item / dim, d = item % dim;
    float block_max = -INFINITY;
    for (int w = 0; w < kWarps; ++w) block_max = fmaxf(block_max, warp_max[w * groups + g]);
    float total = 0.f, sum = 0.f;
    if (block_max != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        const float factor = __expf(warp_max[w * groups + g] - block_max);
        total += factor * warp_acc[(w * groups + g) * width + d];
        sum += factor * warp_sum_[w * groups + g];
      }
    }
    const int64_t head = static_cast<int64_t>(batch) * q_heads + kv_head * groups + g;
    partial[(head * splits + split) * dim + d] = total;
    if (d == 0) {
      partial_max[head * splits + split] = block_max;
      partial_sum[head * splits + split] = sum;
    }
  }
}

// One block per (sequence, query head), one thread per element of the head dim.
template <typename scalar_t>
__global__ void merge_kernel(const float* __restrict__ partial, const float* __restrict__ partial_max,
                             const float* __restrict__ partial_sum, scalar_t* __restrict__ out, int splits, int dim) {
  const int64_t head = blockIdx.x;
  float overall = -INFINITY;
  for (int s = 0; s < splits; ++s) overall = fmaxf(overall, partial_max[head * splits + s]);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float total = 0.f, sum = 0.f;
    if (overall != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float factor = __expf(partial_max[head * splits + s] - overall);
        total += factor * partial[(head * splits + s) * dim + d];
        sum += factor * partial_sum[head * splits + s];
      }
    }
    out[head * dim + d] = static_cast<scalar_t>(sum > 0.f ? total / sum : 0.f);
  }
}

template <typename scalar_t, int kPerLane, int kGroups>
void launch(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& slot_positions,
            const at::Tensor& position, int64_t window, int64_t sinks, float scale, at::Tensor& out) {
  const int batch = q.size(0), q_heads = q.size(1), dim = q.size(2);
  const int kv_heads = keys.size(1), slots = keys.size(2), groups = q_heads / kv_heads;
  // Enough blocks for ~4 per SM, each with at least 32 slots.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int want = std::max(1, (4 * sms + batch * kv_heads - 1) / (batch * kv_heads));
  const int splits = std::max(1, std::min(want, (slots + 31) / 32));
  const int slots_per_split = (slots + splits - 1) / splits;
  const auto float_options = q.options().dtype(at::kFloat);
  at::Tensor partial = at::empty({batch, q_heads, splits, dim}, float_options);
  at::Tensor partial_max = at::empty({batch, q_heads, splits}, float_options);
  at::Tensor partial_sum = at::empty({batch, q_heads, splits}, float_options);
  const size_t shared_bytes = sizeof(float) * kWarps * groups * (2 + 32 * kPerLane);
  auto stream = at::cuda::getCurrentCUDAStream();
  split_kernel<scalar_t, kPerLane, kGroups><<<dim3(splits, kv_heads, batch), kWarps * 32, shared_bytes, stream>>>(
      q.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
      slot_positions.data_ptr<int64_t>(), position.data_ptr<int64_t>(), partial.data_ptr<float>(),
      partial_max.data_ptr<float>(), partial_sum.data_ptr<float>(), slots, kv_heads, groups, dim, slots_per_split,
      window, sinks, scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  merge_kernel<scalar_t><<<batch * q_heads, std::min(dim, 256), 0, stream>>>(
      partial.data_ptr<float>(), partial_max.data_ptr<float>(), partial_sum.data_ptr<float>(),
      out.data_ptr<scalar_t>(), splits, dim);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool decode_attention_supported(int64_t head_dim, int64_t groups, at::ScalarType dtype) {
  const bool fits = head_dim >= 1 && head_dim <= 256 && groups >= 1 && groups <= kMaxGroups;
  return fits && (dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16);
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& slot_positions, const at::Tensor& position, int64_t window,
                            int64_t sinks, double scale) {
  PRIME_CHECK(q.dim() == 3 && keys.dim() == 4 && values.sizes() == keys.sizes(), "decode_attention: bad ranks");
  PRIME_CHECK(q.size(0) == keys.size(0) && q.size(2) == keys.size(3) && q.size(1) % keys.size(1) == 0,
              "decode_attention: q ", q.sizes(), " does not fit keys ", keys.sizes());
  PRIME_CHECK(decode_attention_supported(q.size(2), q.size(1) / keys.size(1), q.scalar_type()),
              "decode_attention: unsupported head dim, group size or dtype");
  PRIME_CHECK(q.is_cuda() && keys.device() == q.device() && values.device() == q.device() &&
                  slot_positions.device() == q.device() && position.device() == q.device(),
              "decode_attention: every input must be on the same CUDA device");
  PRIME_CHECK(keys.scalar_type() == q.scalar_type() && values.scalar_type() == q.scalar_type() &&
                  slot_positions.scalar_type() == at::kLong && position.scalar_type() == at::kLong &&
                  slot_positions.numel() == keys.size(2),
              "decode_attention: dtypes or slot positions do not match");
  PRIME_CHECK(keys.is_contiguous() && values.is_contiguous() && slot_positions.is_contiguous(),
              "decode_attention: keys, values and slot positions must be contiguous");
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor query = q.contiguous();
  at::Tensor out = at::empty_like(query);
  const int64_t per_lane = (q.size(2) + 31) / 32, groups = q.size(1) / keys.size(1);
  auto run = [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const float s = static_cast<float>(scale);
    auto with_groups = [&](auto per_lane_constant) {
      constexpr int kPerLane = decltype(per_lane_constant)::value;
      if (groups <= 2) launch<scalar_t, kPerLane, 2>(query, keys, values, slot_positions, position, window, sinks, s, out);
      else if (groups <= 4) launch<scalar_t, kPerLane, 4>(query, keys, values, slot_positions, position, window, sinks, s, out);
      else launch<scalar_t, kPerLane, kMaxGroups>(query, keys, values, slot_positions, position, window, sinks, s, out);
    };
    if (per_lane <= 1) with_groups(std::integral_constant<int, 1>{});
    else if (per_lane <= 2) with_groups(std::integral_constant<int, 2>{});
    else if (per_lane <= 4) with_groups(std::integral_constant<int, 4>{});
    else with_groups(std::integral_constant<int, 8>{});
  };
  switch (q.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(at::Half{}); break;
    default: run(at::BFloat16{}); break;  // the only other dtype supported() lets through
  }
  return out;
}

}  // namespace prime::kernels
