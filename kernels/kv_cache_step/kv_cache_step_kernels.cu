// CUDA kernel of the fused static-cache step write (see kv_cache_step.h for the op). One launch:
// a grid-stride loop over the B * Hkv * D elements of the token's key and value (copied as raw
// 2-, 4- or 8-byte words) and over the S slots of the mask. The slot is derived from the
// position on the device by every thread (no host read: a CUDA graph replays it). The mask of
// the slot being written uses p itself, so no thread reads the slot position another writes.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/kv_cache_step/kv_cache_step_launch.h"

namespace prime::kernels::detail {

namespace {

constexpr int kThreads = 256;

template <typename Word>
__global__ void kv_cache_step_kernel(const Word* __restrict__ k, const Word* __restrict__ v, Word* __restrict__ keys,
                                     Word* __restrict__ values, long long* __restrict__ slot_positions,
                                     const long long* __restrict__ position, bool* __restrict__ visible, int rows,
                                     int D, int S, long long ring_start, long long window, long long sinks) {
  pdl_wait();  // k, v and the position come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  const long long p = *position;
  const long long slot =
      p < ring_start ? p : (ring_start > 0 ? (p - ring_start) % (S - ring_start) + ring_start : p % S);
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < rows * D; i += stride) {
    const int row = i / D, d = i % D;  // row = b * Hkv + h
    const long long to = (static_cast<long long>(row) * S + slot) * D + d;
    keys[to] = k[i];
    values[to] = v[i];
  }
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < S; s += stride) {
    const long long held = s == slot ? p : slot_positions[s];
    bool seen = held >= 0 && held <= p;
    if (window > 0) seen = seen && (p - held < window || (sinks > 0 && held < sinks));
    visible[s] = seen;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) slot_positions[slot] = p;
}

}  // namespace

void launch_kv_cache_step(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& slot_positions, const at::Tensor& position,
                          const KvStepGeometry& geometry, const at::Tensor& visible) {
  const char* op = "kv_cache_step";
  const at::ScalarType type = keys.scalar_type();
  check_operand(keys, op, "keys", type, 4);
  check_operand(values, op, "values", type, 4);
  check_operand(k, op, "k", type, 3);
  check_operand(v, op, "v", type, 3);
  check_operand(slot_positions, op, "slot_positions", at::kLong, 1);
  check_operand(position, op, "position", at::kLong, 1);
  check_operand(visible, op, "visible", at::kBool, 1);
  const int64_t B = keys.size(0), H = keys.size(1), S = keys.size(2), D = keys.size(3);
  PRIME_CHECK(values.sizes() == keys.sizes() && k.size(0) == B && k.size(1) == H && k.size(2) == D &&
                  v.sizes() == k.sizes() && slot_positions.size(0) == S && visible.size(0) == S,
              op, ": keys ", keys.sizes(), ", k ", k.sizes(), ", slot_positions ", slot_positions.sizes());
  const at::cuda::CUDAGuard guard(keys.device());
  const int rows = static_cast<int>(B * H);
  const int64_t work = std::max<int64_t>(rows * D, S);
  const int blocks = static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, 1024));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto launch = [&](auto word) {
    using Word = decltype(word);
    launch_kernel(
        "kv_cache_step_kernel", kv_cache_step_kernel<Word>, blocks, kThreads, 0, stream,
        reinterpret_cast<const Word*>(k.const_data_ptr()), reinterpret_cast<const Word*>(v.const_data_ptr()),
        reinterpret_cast<Word*>(keys.mutable_data_ptr()), reinterpret_cast<Word*>(values.mutable_data_ptr()),
        reinterpret_cast<long long*>(slot_positions.mutable_data_ptr<int64_t>()),
        reinterpret_cast<const long long*>(position.const_data_ptr<int64_t>()), visible.mutable_data_ptr<bool>(),
        rows, static_cast<int>(D), static_cast<int>(S), geometry.ring_start, geometry.window, geometry.sinks);
  };
  switch (keys.element_size()) {
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 8: launch(uint64_t{}); break;
    default: PRIME_CHECK(false, op, ": element size ", keys.element_size(), " not served");
  }
}

}  // namespace prime::kernels::detail
