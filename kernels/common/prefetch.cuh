// Prefetches into L2 (prefetch.global.L2): a kernel asks for global data it reads later (a chunk
// state, the next iteration's operand) when it starts, so that the later loads hit L2 instead of
// waiting on HBM. A prefetch has no destination register and does not fault.
#pragma once

#include <cstddef>

namespace prime::kernels::detail {

// The 128-byte line holding `address`.
__device__ __forceinline__ void prefetch_l2(const void* address) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(address));
}

// Every line of base[0, count) (base 128-byte aligned or not), spread over the block's threads.
__device__ __forceinline__ void prefetch_l2_block(const float* base, size_t count) {
  constexpr size_t kLine = 32;  // floats per 128-byte line
  for (size_t i = static_cast<size_t>(threadIdx.x) * kLine; i < count; i += static_cast<size_t>(blockDim.x) * kLine)
    prefetch_l2(base + i);
}

}  // namespace prime::kernels::detail
