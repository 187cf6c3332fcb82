// Shared helpers for tests: fixture paths, relative error, seeded random tensors.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include <sys/wait.h>

namespace prime::test {

inline std::filesystem::path fixtures_dir() { return PRIME_FIXTURES_DIR; }
inline std::filesystem::path shared_dir() { return PRIME_SHARED_DIR; }

// max|a - b| / max|b|, in float64.
inline double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  at::Tensor a = actual.to(at::kDouble).cpu(), b = expected.to(at::kDouble).cpu();
  const double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

struct CliRun {
  int exit_code;
  std::string output;
};

// Runs PRIME_BIN_DIR/<command> through the shell, stdout and stderr together, as a user would.
inline CliRun run_cli(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen((std::string(PRIME_BIN_DIR) + "/" + command + " 2>&1").c_str(), "r");
  std::array<char, 4096> buffer{};
  while (size_t n = std::fread(buffer.data(), 1, buffer.size(), pipe)) output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  return {WEXITSTATUS(status), output};
}

}  // namespace prime::test
