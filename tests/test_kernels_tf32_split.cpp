// kernels/common/tf32_split.cuh: the 3xTF32 kernels' hi/lo split rounds with integer operations
// instead of cvt.rna.tf32.f32. On the GPU, every value of a set that spans the fp32 range (zeros,
// subnormals, the largest finite values, both signs) and the rounding's edge cases (ties, one
// below and one above a tie, mantissas that carry into the exponent) must split as the
// instruction splits it.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/common/policy.h"
#include "test_helpers.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/common/tf32_split_check.h"
#endif

using namespace prime;

namespace {

float from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Bit patterns around each rounding edge, for every exponent and both signs: the 13 bits TF32
// drops set to just below, at and just above half an ulp, and all ones (the round-up carries into
// the exponent), over mantissas whose kept bits are 0, random or all ones.
std::vector<float> edge_values() {
  std::vector<float> values;
  const uint32_t dropped[] = {0x0000u, 0x0001u, 0x0fffu, 0x1000u, 0x1001u, 0x1fffu};
  const uint32_t kept[] = {0x000000u, 0x7fe000u, 0x2a4000u, 0x55a000u};
  for (uint32_t sign : {0u, 0x80000000u})
    for (uint32_t exponent = 0; exponent < 255; ++exponent)
      for (uint32_t k : kept)
        for (uint32_t d : dropped) values.push_back(from_bits(sign | (exponent << 23) | k | d));
  return values;
}

}  // namespace

TEST_CASE("TF32 split: the integer rounding splits every finite value as cvt.rna.tf32.f32 does",
          "[kernels][gpu][tf32]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
#ifdef PRIME_WITH_CUDA
  const at::Device cuda(at::kCUDA);
  const std::vector<float> edges = edge_values();
  const at::Tensor edge_tensor = at::from_blob(const_cast<float*>(edges.data()), {static_cast<int64_t>(edges.size())},
                                               at::kFloat).to(cuda);
  CHECK(kernels::tf32_split_mismatches(edge_tensor) == 0);
  // Random values at every scale: normals times 2^e for e in [-150, 125] (finite).
  at::manual_seed(61);
  const auto fp32 = at::TensorOptions().device(cuda).dtype(at::kFloat);
  const at::Tensor scales = at::pow(2.0, at::randint(-150, 126, {1 << 22}, fp32));
  const at::Tensor random = at::randn({1 << 22}, fp32) * scales;
  REQUIRE(at::isfinite(random).all().item<bool>());
  CHECK(kernels::tf32_split_mismatches(random) == 0);
#endif
}
