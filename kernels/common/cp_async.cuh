// Asynchronous 16-byte copies from global to shared memory (cp.async, sm_80 and later), for the
// kernels that stream their next operands while computing on the current ones.
#pragma once

#include <cstdint>

namespace prime::kernels::detail {

__device__ __forceinline__ void cp_async16(void* shared, const void* global) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global));
}

// The same, or 16 zero bytes when !valid (global is then not read, but must be a valid address).
__device__ __forceinline__ void cp_async16_or_zero(void* shared, const void* global, bool valid) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global),
               "r"(valid ? 16 : 0));
}

// An L2 policy that marks the lines an access brings in first to go (createpolicy, sm_80 and later):
// for data read once, so that it does not push out data that is read again.
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// cp_async16_or_zero with an L2 cache policy (l2_evict_first_policy) on the global read.
__device__ __forceinline__ void cp_async16_or_zero(void* shared, const void* global, bool valid, uint64_t policy) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(address), "l"(global),
               "r"(valid ? 16 : 0), "l"(policy));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace prime::kernels::detail
