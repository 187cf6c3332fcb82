// ldmatrix (shared memory to registers in the tensor cores' fragment layout) and the shared-memory
// address it takes, for the kernels written on the raw mma instructions.
#pragma once

#include <cstdint>

namespace prime::kernels::detail {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8 x 8 matrices of 16-bit elements (8 x 4 of 32-bit ones): lanes 8j..8j+7 give the 16-byte
// row addresses of matrix j, and lane l receives the 32-bit word (l / 4, l % 4) of matrix j in r[j].
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// The same with each matrix transposed (16-bit elements only).
__device__ __forceinline__ void ldmatrix_x4_transposed(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

}  // namespace prime::kernels::detail
