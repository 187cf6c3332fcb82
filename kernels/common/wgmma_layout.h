// The shared-memory layout Hopper's warpgroup MMAs (wgmma.cuh) read bf16 operands from, and their
// matrix descriptors; host and device (tests/test_kernels_wgmma_layout.cpp checks the descriptors
// against the PTX ISA's canonical layouts on the CPU).
//
// A matrix is stored in the 128-byte swizzle: each row holds 64 elements (128 bytes), the 16-byte
// chunk c of row r stored at chunk c ^ (r % 8), eight rows making a 1024-byte atom; a matrix with
// more than 64 columns is stored as panels of 64 columns, each panel all its rows (sw128_offset).
// Bases are 1024-byte aligned (the hardware applies the swizzle to the address bits). The same
// bytes serve as a "K-major" operand (the product's depth along the row: A, or B = M^T for M stored
// by rows: k_major) and as an "MN-major" B (depth down the rows: B = M itself: mn_major), which the
// instruction reads with its transpose flag.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PRIME_HOST_DEVICE __host__ __device__
#else
#define PRIME_HOST_DEVICE
#endif

namespace prime::kernels::detail::wgmma {

// The unswizzled byte offset of bf16 element (row, col) of a swizzled [rows, *] matrix (rows a
// multiple of 8): where an operand starting there begins (a descriptor's start; row a multiple of 8
// and col of 8 for that).
PRIME_HOST_DEVICE constexpr uint32_t sw128_start(int row, int col, int rows) {
  return static_cast<uint32_t>((col / 64) * rows * 128 + row * 128 + (col % 64) * 2);
}

// The 128-byte swizzle of an offset from a 1024-byte aligned base: its 16-byte chunk bits (4..6)
// xor its row-in-atom bits (7..9).
PRIME_HOST_DEVICE constexpr uint32_t sw128_swizzle(uint32_t linear) { return linear ^ (((linear >> 7) & 7u) << 4); }

// Where bf16 element (row, col) of a swizzled [rows, *] matrix is stored.
PRIME_HOST_DEVICE constexpr uint32_t sw128_offset(int row, int col, int rows) {
  return sw128_swizzle(sw128_start(row, col, rows));
}

// Bytes from one 64-column panel of a [rows, *] swizzled matrix to the next.
PRIME_HOST_DEVICE constexpr uint32_t sw128_panel_bytes(int rows) { return static_cast<uint32_t>(rows) * 128; }

// The 64-bit matrix descriptor of a swizzled operand at shared address `address` (bytes): lbo the
// leading byte offset, sbo the stride byte offset (both multiples of 16), 128-byte swizzle.
//   K-major operand (depth along rows): sbo = 1024 (from 8 rows to the next 8); lbo unused (16).
//   MN-major B (depth down rows): sbo = 1024 (from 8 depth rows to the next 8), lbo = the bytes from
//   one 64-column panel to the next.
PRIME_HOST_DEVICE constexpr uint64_t descriptor(uint32_t address, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((address & 0x3FFFFu) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFFu) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFFu) >> 4) << 32) | (1ull << 62);
}
constexpr uint32_t kAtomBytes = 1024;

// The descriptor of the 16-deep operand whose first element is (row, col) of a swizzled [rows, *]
// matrix at shared address base: K-major (64 or N rows from `row`, depth col .. col + 15: col a
// multiple of 8) or MN-major (depth rows row .. row + 15, row a multiple of 8; N columns from col).
PRIME_HOST_DEVICE constexpr uint64_t k_major(uint32_t base, int rows, int row, int col) {
  return descriptor(base + sw128_start(row, col, rows), 16, kAtomBytes);
}
PRIME_HOST_DEVICE constexpr uint64_t mn_major(uint32_t base, int rows, int row, int col) {
  return descriptor(base + sw128_start(row, col, rows), sw128_panel_bytes(rows), kAtomBytes);
}

}  // namespace prime::kernels::detail::wgmma
