// The split-K decode attention for fp32 caches on the CUDA cores, and the launcher of both
// kernels (see attention_decode.h for the op, attention_decode_launch.h for the operands; bf16
// caches go to the tensor-core kernel of attention_decode_mma.cu). Decode attention is bound by
// reading the cache: B * Hkv * S * D elements of keys and as many of values per step, each read
// once here.
//
// Layout of the work: a block (4 warps) takes one (sequence b, KV head, range of slots). A group
// of D / 4 lanes holds one key (4 elements per lane: 16-byte loads), so a warp reads 32 / (D / 4)
// consecutive keys per access and the block's warps read consecutive keys too. Keys and values
// reach shared memory through a kStages-deep cp.async pipeline (the copies of trip t + kStages - 1
// are in flight while trip t computes). Each lane group keeps, for all G query heads of the KV
// head, a running max m, a running sum l and its 4 elements of the output accumulator (the online
// softmax, in log2 units: q is pre-scaled by scale * log2(e)). Keys the query cannot see are
// neither loaded nor counted. At the end the groups merge by shuffles, the warps through shared
// memory (store_block_result).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/attention_decode/attention_decode_common.cuh"
#include "kernels/attention_decode/attention_decode_launch.h"

namespace prime::kernels::detail {

namespace {

// Keys per lane group per loop trip: 4 16-byte loads per lane (2 with 8 query heads per KV
// head, whose accumulators take the registers).
constexpr int kUnroll = 4;

// 16 bytes at p (16-byte aligned), raw: loads are issued as raw words (fewer registers in flight)
// and converted where they are used.
__device__ __forceinline__ uint4 load_raw(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// The 16 raw bytes as 4 floats.
__device__ __forceinline__ void unpack(const uint4& raw, float (&out)[4]) {
  out[0] = __uint_as_float(raw.x), out[1] = __uint_as_float(raw.y);
  out[2] = __uint_as_float(raw.z), out[3] = __uint_as_float(raw.w);
}

// Trips of keys in flight per block: stage t + kStages - 1 is loading while trip t computes.
constexpr int kStages = 4;

// One block per (range, KV head, sequence). T the element type, D the head dim, G the largest
// number of query heads per KV head served by this instance (groups <= G at run time).
// Registers held so that 4 (2 heads per KV head), 3 (4) or 2 (8) blocks share a multiprocessor.
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads, G <= 2 ? 4 : (G <= 4 ? 3 : 2))
    attention_decode_split_kernel(const T* __restrict__ q, const T* __restrict__ keys,
                                  const T* __restrict__ values, const bool* __restrict__ visible,
                                  float* __restrict__ part_acc, float* __restrict__ part_ml,
                                  T* __restrict__ out, int kv_heads, int groups, int slots,
                                  int keys_per_split, int splits, float scale_log2) {
  pdl_wait();  // q and the cache's new slot come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kLanes = D / kVec;            // lanes holding one key
  constexpr int kKeysPerWarp = 32 / kLanes;   // keys a warp reads per access
  constexpr int kKeysPerStep = kWarps * kKeysPerWarp;
  constexpr int kSteps = G >= 8 ? kUnroll / 2 : kUnroll;
  static_assert(kLanes >= 1 && kLanes <= 32 && 32 % kLanes == 0, "head dim not served");
  __shared__ float shared_m[kWarps][G], shared_l[kWarps][G];
  __shared__ float shared_acc[kWarps][G][D];
  // Per lane group: the trip's complete scores, then its softmax weights, index g * kSteps + u.
  constexpr int kValues = kSteps * G;
  __shared__ float exchange[kWarps][kKeysPerWarp][2][kValues];
  // The reduce-scatter leaves lane `part` of a group the kKeep consecutive values from
  // owned_index; with fewer values than lanes, kLanes / kValues lanes hold each and the lowest
  // of them publishes it.
  constexpr int kKeep = kValues >= kLanes ? kValues / kLanes : 1;
  constexpr int kDup = kValues >= kLanes ? 1 : kLanes / kValues;

  const int split = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int key_slot = lane / kLanes, part = lane % kLanes;
  const long long sequence_head = static_cast<long long>(b) * kv_heads + kv_head;
  const int owned_index = (part / kDup) * kKeep;
  const bool writer = part % kDup == 0;
  float* exchange_score = exchange[warp][key_slot][0];
  float* exchange_weight = exchange[warp][key_slot][1];

  // This lane's elements of the group's queries, scaled into log2 units.
  float query[G][kVec];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (g < groups) {
      unpack(load_raw(q + (sequence_head * groups + g) * D + part * kVec), query[g]);
#pragma unroll
      for (int e = 0; e < kVec; ++e) query[g][e] *= scale_log2;
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) query[g][e] = 0.0f;
    }
  }
  float m[G], l[G], acc[G][kVec];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[g][e] = 0.0f;
  }

  const int begin = split * keys_per_split;
  const int end = min(slots, begin + keys_per_split);
  constexpr int kTrip = kKeysPerStep * kSteps;  // keys per trip
  constexpr int kStageElements = kTrip * D;     // of keys (and of values) per stage
  extern __shared__ __align__(16) unsigned char stage_memory[];
  T* stage_keys = reinterpret_cast<T*>(stage_memory);              // [kStages][kTrip][D]
  T* stage_values = stage_keys + kStages * kStageElements;         // [kStages][kTrip][D]
  unsigned char* stage_seen = reinterpret_cast<unsigned char*>(stage_values + kStages * kStageElements);
  const T* key_rows = keys + sequence_head * slots * D;
  const T* value_rows = values + sequence_head * slots * D;
  const int trips = (end - begin + kTrip - 1) / kTrip;
  const int lane_key = warp * kKeysPerWarp + key_slot;  // the lane group's key within a step

  // Every thread copies its share of a trip's keys and values (16 bytes each) into the trip's
  // stage; keys the query does not see (and past the range) are zero-filled, not read.
  const auto issue = [&](int trip) {
    const int buffer = trip % kStages, base = begin + trip * kTrip;
    for (int c = threadIdx.x; c < kTrip * kLanes; c += kThreads) {
      const int row = c / kLanes, chunk = c % kLanes, s = base + row;
      const bool seen = trip < trips && s < end && visible[s];
      const long long from = static_cast<long long>(seen ? s : 0) * D + chunk * kVec;
      const int to = buffer * kStageElements + row * D + chunk * kVec;
      copy_async16(stage_keys + to, key_rows + from, seen);
      copy_async16(stage_values + to, value_rows + from, seen);
      if (chunk == 0) stage_seen[buffer * kTrip + row] = seen;
    }
    copy_async_commit();  // empty groups too: the wait below counts groups
  };
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) issue(t);
  for (int trip = 0; trip < trips; ++trip) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // trip's stage landed for all threads; the stage of trip - 1 is free
    issue(trip + kStages - 1);
    const int buffer = trip % kStages;
    unsigned seen_mask = 0;  // bit u: key u of the trip is seen
    uint4 key_raw[kSteps];
#pragma unroll
    for (int u = 0; u < kSteps; ++u) {
      const int row = u * kKeysPerStep + lane_key;
      seen_mask |= static_cast<unsigned>(stage_seen[buffer * kTrip + row]) << u;
      key_raw[u] = *reinterpret_cast<const uint4*>(stage_keys + buffer * kStageElements + row * D + part * kVec);
    }
    // The lane's partial dot products for every (head, key) of the trip, index g * kSteps + u.
    float partial[kValues];
#pragma unroll
    for (int u = 0; u < kSteps; ++u) {
      float key[kVec];
      unpack(key_raw[u], key);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot = fmaf(query[g][e], key[e], dot);
        partial[g * kSteps + u] = dot;
      }
    }
    // Reduce-scatter over the key's lanes: each step halves what a lane holds and exchanges the
    // other half with one shuffle per value (kValues - 1 shuffles in all where a butterfly per
    // value would take kValues * log2(kLanes)); once a lane holds one value, butterflies.
#pragma unroll
    for (int step = 0; (kLanes >> (step + 1)) >= 1; ++step) {
      const int offset = kLanes >> (step + 1), count = kValues >> step;
      if (count >= 2) {
        const int half = count / 2;
        const bool upper = (part & offset) != 0;
#pragma unroll
        for (int i = 0; i < half; ++i) {
          const float send = upper ? partial[i] : partial[i + half];
          const float keep = upper ? partial[i + half] : partial[i];
          partial[i] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
        }
      } else {
        partial[0] += __shfl_xor_sync(0xffffffffu, partial[0], offset);
      }
    }
    // Publish the complete scores (-inf for keys not seen) to the lane group, take each head's
    // maximum, then each owner turns its scores into weights and publishes those.
    __syncwarp();
    if (writer) {
#pragma unroll
      for (int i = 0; i < kKeep; ++i) {
        const int index = owned_index + i;
        exchange_score[index] = (seen_mask >> (index % kSteps)) & 1u ? partial[i] : -INFINITY;
      }
    }
    __syncwarp();
    float ref[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float top = m[g];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) top = fmaxf(top, exchange_score[g * kSteps + u]);
      ref[g] = reference(top);
      const float rescale = exp2f(m[g] - ref[g]);
      l[g] *= rescale;
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[g][e] *= rescale;
      m[g] = top;
    }
    if (writer) {
#pragma unroll
      for (int i = 0; i < kKeep; ++i) {
        const int index = owned_index + i;
        float head_ref = 0.0f;  // ref[index / kSteps], without indexing registers at run time
#pragma unroll
        for (int g = 0; g < G; ++g) head_ref = g == index / kSteps ? ref[g] : head_ref;
        exchange_weight[index] = exp2f(exchange_score[index] - head_ref);
      }
    }
    __syncwarp();
#pragma unroll
    for (int u = 0; u < kSteps; ++u) {
      float value[kVec];
      unpack(*reinterpret_cast<const uint4*>(stage_values + buffer * kStageElements +
                                             (u * kKeysPerStep + lane_key) * D + part * kVec),
             value);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float p = exchange_weight[g * kSteps + u];
        l[g] += p;
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[g][e] = fmaf(p, value[e], acc[g][e]);
      }
    }
  }

  // Merge the warp's key slots (lanes with the same part), then the warps.
#pragma unroll
  for (int offset = kLanes; offset < 32; offset *= 2) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float other_m = __shfl_xor_sync(0xffffffffu, m[g], offset);
      const float other_l = __shfl_xor_sync(0xffffffffu, l[g], offset);
      const float top = fmaxf(m[g], other_m), ref = reference(top);
      const float mine = exp2f(m[g] - ref), theirs = exp2f(other_m - ref);
      l[g] = l[g] * mine + other_l * theirs;
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float other = __shfl_xor_sync(0xffffffffu, acc[g][e], offset);
        acc[g][e] = acc[g][e] * mine + other * theirs;
      }
      m[g] = top;
    }
  }
  if (key_slot == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) shared_acc[warp][g][part * kVec + e] = acc[g][e];
      if (part == 0) {
        shared_m[warp][g] = m[g];
        shared_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();
  store_block_result<T, D, G>(&shared_m[0][0], &shared_l[0][0], &shared_acc[0][0][0], groups, sequence_head,
                              split, splits, part_acc, part_ml, out);
}

void launch_float(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                  const at::Tensor& visible, double scale, const at::Tensor& out) {
  using T = float;
  const int64_t B = keys.size(0), Hkv = keys.size(1), S = keys.size(2), D = keys.size(3);
  const int64_t groups = q.size(1) / Hkv;
  const int64_t per_trip = kWarps * (32 / (D / 4)) * kUnroll;
  const Ranges ranges = plan_ranges(q, B, Hkv, S, D, per_trip, /*blocks_per_sm=*/4);
  const dim3 grid(static_cast<unsigned>(ranges.splits), static_cast<unsigned>(Hkv), static_cast<unsigned>(B));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const float scale_log2 = static_cast<float>(scale) * kLog2e;
  const auto launch = [&](auto dim, auto group_limit) {
    constexpr int kD = decltype(dim)::value, kG = decltype(group_limit)::value;
    constexpr int kSteps = kG >= 8 ? kUnroll / 2 : kUnroll;
    constexpr int kTrip = kWarps * (32 / (kD / 4)) * kSteps;
    constexpr int kBytes = kStages * (2 * kTrip * kD * static_cast<int>(sizeof(T)) + kTrip);
    PRIME_CUDA_CHECK(cudaFuncSetAttribute(attention_decode_split_kernel<T, kD, kG>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes));
    launch_kernel(
        "attention_decode_split_kernel", attention_decode_split_kernel<T, kD, kG>, grid, kThreads, kBytes, stream,
        q.const_data_ptr<T>(), keys.const_data_ptr<T>(), values.const_data_ptr<T>(), visible.const_data_ptr<bool>(),
        ranges.splits > 1 ? ranges.part_acc.mutable_data_ptr<float>() : nullptr,
        ranges.splits > 1 ? ranges.part_ml.mutable_data_ptr<float>() : nullptr, out.mutable_data_ptr<T>(),
        static_cast<int>(Hkv), static_cast<int>(groups), static_cast<int>(S),
        static_cast<int>(ranges.keys_per_split), static_cast<int>(ranges.splits), scale_log2);
  };
  const auto by_groups = [&](auto dim) {
    // One query head per KV head runs the two-head instance (each instance costs build time).
    if (groups <= 2) launch(dim, std::integral_constant<int, 2>{});
    else if (groups <= 4) launch(dim, std::integral_constant<int, 4>{});
    else launch(dim, std::integral_constant<int, 8>{});
  };
  switch (D) {
    case 32: by_groups(std::integral_constant<int, 32>{}); break;
    case 64: by_groups(std::integral_constant<int, 64>{}); break;
    case 128: by_groups(std::integral_constant<int, 128>{}); break;
    default: PRIME_CHECK(false, "attention_decode: head dim ", D, " not served for float");
  }
  combine_ranges<T>(ranges, out, B * q.size(1), D, stream);
}

}  // namespace

void launch_attention_decode(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                             const at::Tensor& visible, double scale, const at::Tensor& out) {
  const char* op = "attention_decode";
  const at::ScalarType type = q.scalar_type();
  check_operand(q, op, "q", type, 3);
  check_operand(keys, op, "keys", type, 4);
  check_operand(values, op, "values", type, 4);
  check_operand(visible, op, "visible", at::kBool, 1);
  check_operand(out, op, "out", type, 3);
  const int64_t B = keys.size(0), Hkv = keys.size(1), S = keys.size(2), D = keys.size(3);
  PRIME_CHECK(values.sizes() == keys.sizes() && q.size(0) == B && q.size(2) == D && q.size(1) % Hkv == 0 &&
                  q.size(1) / Hkv <= 8 && visible.size(0) == S && out.sizes() == q.sizes(),
              op, ": q ", q.sizes(), ", keys ", keys.sizes(), ", values ", values.sizes(), ", visible ",
              visible.sizes(), ", out ", out.sizes());
  PRIME_CHECK(S * D <= INT32_MAX, op, ": ", S, " slots of dim ", D, " exceed the kernel's indexing");
  for (const at::Tensor* t : {&keys, &values, &visible, &out})
    PRIME_CHECK(t->device() == q.device(), op, ": operands on different devices");
  if (B == 0 || q.size(1) == 0) return;
  const at::cuda::CUDAGuard guard(q.device());
  if (type == at::kBFloat16) launch_attention_decode_mma(q, keys, values, visible, scale, out);
  else if (type == at::kFloat) launch_float(q, keys, values, visible, scale, out);
  else PRIME_CHECK(false, op, ": dtype ", c10::toString(type), " not served");
}

}  // namespace prime::kernels::detail
