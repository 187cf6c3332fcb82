// Shared helpers for tests: fixture paths, relative error, seeded random tensors.
#pragma once

#include <ATen/ATen.h>

#include <filesystem>
#include <string>

namespace prime::test {

inline std::filesystem::path fixtures_dir() { return PRIME_FIXTURES_DIR; }
inline std::filesystem::path shared_dir() { return PRIME_SHARED_DIR; }

// max|a - b| / max|b|, in float64.
inline double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  at::Tensor a = actual.to(at::kDouble).cpu(), b = expected.to(at::kDouble).cpu();
  const double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

}  // namespace prime::test
