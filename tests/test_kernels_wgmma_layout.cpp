// kernels/common/wgmma_layout.h on the CPU: the descriptors GKA's warpgroup solve
// (gka_solve_wgmma_descriptors.h) builds, read back the way the PTX ISA defines a descriptor's reading
// (its canonical 128-byte-swizzle layouts, bf16: T = 8 elements per 16 bytes), give the matrix
// elements the products need, from matrices stored with sw128_offset. The GPU tests check the
// products themselves; this pins the address arithmetic (starts, strides, panels) to the layout
// each operand was written in.
//   K-major ((8, m), (T, 2)) : ((8T, SBO), (1, T)): operand (mn, k) at start + (mn / 8) SBO +
//   (mn % 8) 128 + (k / 8) 16 + (k % 8) 2 bytes;
//   MN-major ((T, 8, m), (8, k)) : ((1, T, LBO), (8T, SBO)): operand (k, mn) at start + (mn / 64) LBO
//   + (mn % 64) 2 + (k / 8) SBO + (k % 8) 128 bytes;
// then the swizzle of the whole address (bits 4..6 xor bits 7..9).
#include <catch2/catch.hpp>

#include <cstdint>
#include <set>
#include <vector>

#include "kernels/common/wgmma_layout.h"
#include "kernels/gka_solve/gka_solve_wgmma_descriptors.h"

using namespace prime::kernels::detail::wgmma;
template <int D>
using Descriptors = prime::kernels::detail::gka_bf16::WgmmaDescriptors<D>;

namespace {

struct Fields {
  uint32_t start, lbo, sbo, swizzle;
};

Fields decode(uint64_t d) {
  return {static_cast<uint32_t>(d & 0x3FFF) << 4, static_cast<uint32_t>((d >> 16) & 0x3FFF) << 4,
          static_cast<uint32_t>((d >> 32) & 0x3FFF) << 4, static_cast<uint32_t>(d >> 62)};
}

uint32_t k_major_read(uint64_t d, int mn, int k) {
  const Fields f = decode(d);
  return sw128_swizzle(f.start + (mn / 8) * f.sbo + (mn % 8) * 128 + (k / 8) * 16 + (k % 8) * 2);
}

uint32_t mn_major_read(uint64_t d, int k, int mn) {
  const Fields f = decode(d);
  return sw128_swizzle(f.start + (mn / 64) * f.lbo + (mn % 64) * 2 + (k / 8) * f.sbo + (k % 8) * 128);
}

// A [rows, cols] matrix stored swizzled at base (a multiple of 1024): element (r, c) holds r * cols + c.
struct Stored {
  int rows, cols;
  uint32_t base;
  std::vector<int> bytes;  // element index at each even byte offset from base, -1 where none
  Stored(int r, int c, uint32_t b) : rows(r), cols(c), base(b), bytes(static_cast<size_t>(r) * c, -1) {
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j) {
        const uint32_t at = sw128_offset(i, j, rows);
        REQUIRE(at % 2 == 0);
        REQUIRE(at / 2 < bytes.size());
        REQUIRE(bytes[at / 2] == -1);  // one element per place
        bytes[at / 2] = i * cols + j;
      }
  }
  int at(uint32_t address) const {
    REQUIRE(address >= base);
    REQUIRE((address - base) / 2 < bytes.size());
    return bytes[(address - base) / 2];
  }
};

}  // namespace

TEST_CASE("wgmma layout: the swizzle is a permutation of 16-byte chunks within each 1024-byte atom", "[kernels]") {
  std::set<uint32_t> chunks;
  for (int row = 0; row < 64; ++row)
    for (int col = 0; col < 128; col += 8) {
      const uint32_t at = sw128_offset(row, col, 64);
      CHECK(at % 16 == 0);
      CHECK(at / 1024 == sw128_start(row, col, 64) / 1024);  // stays in its atom
      for (int e = 1; e < 8; ++e) CHECK(sw128_offset(row, col + e, 64) == at + 2 * e);
      chunks.insert(at);
    }
  CHECK(chunks.size() == 64 * 16);
  CHECK(sw128_offset(3, 8, 64) == 3 * 128 + ((1 ^ 3) * 16));
  CHECK(sw128_offset(0, 64, 64) == 64 * 128);  // the second panel
}

TEST_CASE("wgmma layout: GKA's warpgroup solve's descriptors read the elements its products need", "[kernels]") {
  for (const int D : {64, 128}) {
    INFO("D=" << D);
    // Three bases apart (a mix-up reads the wrong matrix), H_0's near the top of shared memory.
    const uint32_t keys_at = 1024 * 37, scaled_at = 1024 * 61, h0_at = 1024 * 180;
    const Stored keys(64, D, keys_at), h0(D, D, h0_at), scaled(64, D, scaled_at);
    for (int group = 0; group < D / 64; ++group) {  // a warpgroup per 64 columns
      const int half = 64, col0 = half * group;
      INFO("group " << group);
      const auto check = [&](const auto& desc) {
        // P_c = x K_c^T: B[k][n] = K[n][col0 + 16 s + k], K-major, n < 64.
        for (int s = 0; s < half / 16; ++s) {
          const uint64_t d = desc.keys_by_depth(s);
          CHECK(d == k_major(keys_at, 64, 0, col0 + 16 * s));
          CHECK(decode(d).swizzle == 1);
          for (int n = 0; n < 64; ++n)
            for (int k = 0; k < 16; ++k) REQUIRE(keys.at(k_major_read(d, n, k)) == n * D + col0 + 16 * s + k);
        }
        // Y = X_sw H_0[:, c]: A[m][k] = X[m][16 s + k] (K-major, m < 64); B[k][n] = H_0[16 s + k][col0 + n]
        // (MN-major, n < 64).
        for (int s = 0; s < D / 16; ++s) {
          const uint64_t a = desc.scaled_by_depth(s), b = desc.h0_by_depth(s);
          CHECK(a == k_major(scaled_at, 64, 0, 16 * s));
          CHECK(b == mn_major(h0_at, D, 16 * s, col0));
          for (int m = 0; m < 64; ++m)
            for (int k = 0; k < 16; ++k) REQUIRE(scaled.at(k_major_read(a, m, k)) == m * D + 16 * s + k);
          for (int k = 0; k < 16; ++k)
            for (int n = 0; n < half; ++n) REQUIRE(h0.at(mn_major_read(b, k, n)) == (16 * s + k) * D + col0 + n);
        }
        // Y += P K[:, c]: B[j][n] = K[16 s + j][col0 + n] (MN-major, n < 64).
        for (int s = 0; s < 4; ++s) {
          const uint64_t b = desc.keys_by_row(s);
          CHECK(b == mn_major(keys_at, 64, 16 * s, col0));
          for (int j = 0; j < 16; ++j)
            for (int n = 0; n < half; ++n) REQUIRE(keys.at(mn_major_read(b, j, n)) == (16 * s + j) * D + col0 + n);
        }
      };
      if (D == 64)
        check(Descriptors<64>(keys_at, scaled_at, h0_at, col0));
      else
        check(Descriptors<128>(keys_at, scaled_at, h0_at, col0));
    }
  }
}
