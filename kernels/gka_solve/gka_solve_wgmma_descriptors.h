// The operand descriptors of GKA's warpgroup solve (gka_solve_bf16_wgmma.cuh), host and device:
// tests/test_kernels_wgmma_layout.cpp reads every element they address on the CPU.
//
// A warpgroup's four bases are built once before the iterations; each MMA's descriptor is its base
// with the start moved on by a constant (wgmma_layout.h's layouts are additive in the panel-aligned
// column and in the row), one add where building a descriptor anew took a handful of instructions.
// The start field holds address / 16 in 14 bits: every shared address is below 2^18, so the add
// never carries out of it.
#pragma once

#include <cstdint>

#include "kernels/common/wgmma_layout.h"

namespace prime::kernels::detail::gka_bf16 {

// keys K [64, D], X_sw [64, D] and H_0 [D, D] (swizzled, at 1024-byte aligned shared addresses), the
// warpgroup's first column col0 (a multiple of 64).
template <int D>
struct WgmmaDescriptors {
  uint64_t keys_k, keys_mn, scaled_k, h0_mn;

  PRIME_HOST_DEVICE constexpr WgmmaDescriptors(uint32_t keys, uint32_t scaled, uint32_t h0, int col0)
      : keys_k(wgmma::k_major(keys, 64, 0, col0)),
        keys_mn(wgmma::mn_major(keys, 64, 0, col0)),
        scaled_k(wgmma::k_major(scaled, 64, 0, 0)),
        h0_mn(wgmma::mn_major(h0, D, 0, col0)) {}

  // P_c = x K_c^T, depth step s: B[k][n] = K[n][col0 + 16 s + k] (K-major).
  PRIME_HOST_DEVICE constexpr uint64_t keys_by_depth(int s) const {
    return advance(keys_k, wgmma::sw128_start(0, 16 * s, 64));
  }
  // Y = X_sw H_0[:, c], depth step s: A[m][k] = X_sw[m][16 s + k] (K-major) ...
  PRIME_HOST_DEVICE constexpr uint64_t scaled_by_depth(int s) const {
    return advance(scaled_k, wgmma::sw128_start(0, 16 * s, 64));
  }
  // ... and B[k][n] = H_0[16 s + k][col0 + n] (MN-major).
  PRIME_HOST_DEVICE constexpr uint64_t h0_by_depth(int s) const {
    return advance(h0_mn, wgmma::sw128_start(16 * s, 0, D));
  }
  // Y += P K[:, c], keys 16 s .. 16 s + 15: B[j][n] = K[16 s + j][col0 + n] (MN-major).
  PRIME_HOST_DEVICE constexpr uint64_t keys_by_row(int s) const {
    return advance(keys_mn, wgmma::sw128_start(16 * s, 0, 64));
  }

 private:
  // The start field is the low word's low 14 bits and never carries out (see above): the add is on
  // the low word alone, the high word (the stride and the swizzle) a constant.
  PRIME_HOST_DEVICE static constexpr uint64_t advance(uint64_t desc, uint32_t bytes) {
    return (desc >> 32 << 32) | (static_cast<uint32_t>(desc) + (bytes >> 4));
  }
};

}  // namespace prime::kernels::detail::gka_bf16
