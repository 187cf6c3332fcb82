// kernels/common/wgmma_layout.h on the CPU: the descriptors GKA's warpgroup solve
// (gka_solve_wgmma_descriptors.h) and GDN's warpgroup walk (gdn_walk_wgmma_descriptors.h) build,
// read back the way the PTX ISA defines a descriptor's reading (its canonical 128-byte-swizzle
// layouts, bf16: T = 8 elements per 16 bytes), give the matrix
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
#include <tuple>
#include <vector>

#include "kernels/common/wgmma_layout.h"
#include "kernels/gdn_chunk/gdn_walk_wgmma_descriptors.h"
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

TEST_CASE("wgmma layout: GDN's warpgroup walk's descriptors read the elements its products need", "[kernels]") {
  using prime::kernels::detail::gdn_forward_bf16::WalkDescriptors;
  // Bases apart as in the kernel's block (a mix-up reads the wrong matrix).
  const uint32_t q_at = 1024 * 16, k_at = 1024 * 48, w_at = 1024 * 64, s_at = 1024 * 128, scores_at = 1024 * 160,
                 ub_at = 1024 * 96, ud_at = 1024 * 112;
  const Stored q(64, 128, q_at), k(64, 128, k_at), w(64, 128, w_at), s(128, 128, s_at), scores(64, 64, scores_at),
      ub(64, 128, ub_at), ud(64, 128, ud_at);
  const WalkDescriptors desc{q_at, k_at, w_at, s_at, scores_at, ub_at, ud_at};
  for (int col : {0, 64}) {
    INFO("columns from " << col);
    for (int t = 0; t < 8; ++t) {  // W S and Q S: A[m][j] = X[m][16 t + j], B[j][n] = S[16 t + j][col + n]
      CHECK(desc.w_by_depth(t) == k_major(w_at, 64, 0, 16 * t));
      CHECK(desc.s_by_depth(t, col) == mn_major(s_at, 128, 16 * t, col));
      for (int m = 0; m < 64; ++m)
        for (int j = 0; j < 16; ++j) {
          REQUIRE(w.at(k_major_read(desc.w_by_depth(t), m, j)) == m * 128 + 16 * t + j);
          REQUIRE(q.at(k_major_read(desc.q_by_depth(t), m, j)) == m * 128 + 16 * t + j);
          REQUIRE(s.at(mn_major_read(desc.s_by_depth(t, col), j, m)) == (16 * t + j) * 128 + col + m);
        }
    }
    for (int t = 0; t < 4; ++t)  // P U_n and K^T U_d: B[j][n] = U[16 t + j][col + n]; A[m][j] = K[16 t + j][col + m]
      for (int j = 0; j < 16; ++j)
        for (int n = 0; n < 64; ++n) {
          REQUIRE(ub.at(mn_major_read(desc.ub_by_row(t, col), j, n)) == (16 * t + j) * 128 + col + n);
          REQUIRE(ud.at(mn_major_read(desc.ud_by_row(t, col), j, n)) == (16 * t + j) * 128 + col + n);
          REQUIRE(k.at(mn_major_read(desc.kt_by_row(t, col), j, n)) == (16 * t + j) * 128 + col + n);
        }
  }
  for (int t = 0; t < 8; ++t)  // the scores: B[j][n] = K[n][16 t + j]
    for (int n = 0; n < 64; ++n)
      for (int j = 0; j < 16; ++j) REQUIRE(k.at(k_major_read(desc.k_by_depth(t), n, j)) == n * 128 + 16 * t + j);
  for (int row : {0, 32})  // the scores' columns row .. row + 31 (m64n32k16): B[j][n] = K[row + n][16 t + j]
    for (int t = 0; t < 8; ++t)
      for (int n = 0; n < 32; ++n)
        for (int j = 0; j < 16; ++j)
          REQUIRE(k.at(k_major_read(desc.k_rows_by_depth(t, row), n, j)) == (row + n) * 128 + 16 * t + j);
  for (int t = 0; t < 4; ++t)  // P's rows: A[m][j] = P[m][16 t + j]
    for (int m = 0; m < 64; ++m)
      for (int j = 0; j < 16; ++j) REQUIRE(scores.at(k_major_read(desc.scores_by_depth(t), m, j)) == m * 64 + 16 * t + j);
}

TEST_CASE("wgmma layout: an accumulator pair's place by one xor is sw128_offset's", "[kernels]") {
  using prime::kernels::detail::gdn_forward_bf16::accumulator_pair_offset;
  for (const auto& [rows, row_offset, col] : std::vector<std::tuple<int, int, int>>{
           {64, 0, 0}, {64, 0, 64}, {128, 0, 0}, {128, 64, 64}, {128, 64, 0}})
    for (int warp = 0; warp < 16; ++warp)
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 8; ++j)
            REQUIRE(accumulator_pair_offset(warp, lane, i, j, row_offset, col, rows) ==
                    sw128_offset(row_offset + 16 * (warp % 4) + lane / 4 + 8 * i, col + 8 * j + 2 * (lane % 4), rows));
}
