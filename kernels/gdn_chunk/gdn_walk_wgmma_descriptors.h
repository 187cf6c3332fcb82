// The operand descriptors and accumulator places of GDN's fused walk on the warpgroup MMAs
// (gdn_forward_bf16_walk_wgmma_kernels.cu), host and device: tests/test_kernels_wgmma_layout.cpp
// reads every element they address on the CPU. Matrices are bf16 in wgmma_layout.h's 128-byte
// swizzle at 1024-byte aligned shared addresses; D = 128, chunks of 64. Each descriptor is its
// matrix's first one with the start moved on by a constant (the layouts are additive in the
// panel-aligned column and in the row; the 14-bit start field holds address / 16 and never carries
// out below 2^18 bytes of shared memory): one add in the kernel's loop.
#pragma once

#include <cstdint>

#include "kernels/common/wgmma_layout.h"

namespace prime::kernels::detail::gdn_forward_bf16 {

struct WalkDescriptors {
  // q, k: Q_n and K_n [64, 128]; w: W_n [64, 128]; s: bf16(S) [128, 128]; scores: P [64, 64];
  // ub, ud: U_n and its decayed rows [64, 128].
  uint32_t q, k, w, s, scores, ub, ud;

  // U_n's or O_n's first product on columns col .. col + 63 (col 0 or 64), depth step t:
  // A[m][j] = X[m][16 t + j] for X = W_n (w_by_depth) or Q_n (q_by_depth), K-major;
  // B[j][n] = S[16 t + j][col + n], MN-major.
  PRIME_HOST_DEVICE constexpr uint64_t w_by_depth(int t) const { return by_depth(w, t); }
  PRIME_HOST_DEVICE constexpr uint64_t q_by_depth(int t) const { return by_depth(q, t); }
  PRIME_HOST_DEVICE constexpr uint64_t s_by_depth(int t, int col) const {
    return advance(wgmma::mn_major(s, 128, 0, col), wgmma::sw128_start(16 * t, 0, 128));
  }
  // The scores Q_n K_n^T, depth step t: B[j][n] = K[n][16 t + j], K-major.
  PRIME_HOST_DEVICE constexpr uint64_t k_by_depth(int t) const { return by_depth(k, t); }
  // The same for the scores' columns row .. row + 31 (row 0 or 32; the m64n32k16 shape): B[j][n] =
  // K[row + n][16 t + j].
  PRIME_HOST_DEVICE constexpr uint64_t k_rows_by_depth(int t, int row) const {
    return advance(wgmma::k_major(k, 64, row, 0), wgmma::sw128_start(0, 16 * t, 64));
  }
  // O_n += P U_n on columns col ..: A[m][j] = P[m][16 t + j] (K-major), B[j][n] = U_n[16 t + j][col + n]
  // (MN-major).
  PRIME_HOST_DEVICE constexpr uint64_t scores_by_depth(int t) const { return by_depth(scores, t); }
  PRIME_HOST_DEVICE constexpr uint64_t ub_by_row(int t, int col) const { return by_row(ub, t, col); }
  // S[row .., col ..] += K_n^T diag(e^{G_end - G}) U_n, chunk rows 16 t ..: A[m][j] = K[16 t + j][row + m]
  // (A = K^T: the MMA's transposed A, read as an MN-major operand), B[j][n] = U_d[16 t + j][col + n]
  // (MN-major).
  PRIME_HOST_DEVICE constexpr uint64_t kt_by_row(int t, int row) const { return by_row(k, t, row); }
  PRIME_HOST_DEVICE constexpr uint64_t ud_by_row(int t, int col) const { return by_row(ud, t, col); }

 private:
  PRIME_HOST_DEVICE static constexpr uint64_t advance(uint64_t desc, uint32_t bytes) {
    return (desc >> 32 << 32) | (static_cast<uint32_t>(desc) + (bytes >> 4));
  }
  // A [64, *] matrix at `at` as a K-major operand from column 16 t, or as an MN-major one from row
  // 16 t and column col.
  PRIME_HOST_DEVICE static constexpr uint64_t by_depth(uint32_t at, int t) {
    return advance(wgmma::k_major(at, 64, 0, 0), wgmma::sw128_start(0, 16 * t, 64));
  }
  PRIME_HOST_DEVICE static constexpr uint64_t by_row(uint32_t at, int t, int col) {
    return advance(wgmma::mn_major(at, 64, 0, col), wgmma::sw128_start(16 * t, 0, 64));
  }
};

// Where a thread's pair (e, e + 1) of a 64 x 64 accumulator (wgmma.cuh's layout: e = 4 j + 2 i, at
// row 16 (warp % 4) + lane / 4 + 8 i, columns 8 j + 2 (lane % 4) ..) lies in a swizzled matrix of
// `rows` rows that holds the accumulator at row_offset (a multiple of 8) and col (a multiple of 64):
// sw128_offset's value, with the swizzle done as one xor, since every such row is lane / 4 modulo 8.
PRIME_HOST_DEVICE constexpr uint32_t accumulator_pair_offset(int warp, int lane, int i, int j, int row_offset, int col,
                                                             int rows) {
  return static_cast<uint32_t>((col / 64) * rows * 128 + (row_offset + 16 * (warp % 4) + lane / 4 + 8 * i) * 128) +
         ((static_cast<uint32_t>(j) << 4 ^ static_cast<uint32_t>(lane / 4) << 4) | static_cast<uint32_t>(4 * (lane % 4)));
}

}  // namespace prime::kernels::detail::gdn_forward_bf16
