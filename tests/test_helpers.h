// Shared helpers for tests: fixture paths, relative error, CLI runs, the [gpu] tests' CUDA check.
#pragma once

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <sys/wait.h>

namespace prime::test {

// The environment variable `name` set to `value` (nullptr: unset) while alive; what was there
// before is restored, also when a failed REQUIRE leaves the test case early.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) previous_ = old;
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_)
      ::setenv(name_.c_str(), previous_.c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  bool had_ = false;
  std::string previous_;
};

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

// Where the apps the CLI tests run are: this build's bin folder (PRIME_BIN_DIR), or PRIME_TEST_BIN_DIR where set
// (binaries built on one machine and run on another, as the GPU runner does).
inline std::string bin_dir() {
  const char* moved = std::getenv("PRIME_TEST_BIN_DIR");
  return moved != nullptr && *moved != '\0' ? moved : PRIME_BIN_DIR;
}

// Runs bin_dir()/<command> through the shell, stdout and stderr together, as a user would.
inline CliRun run_cli(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen((bin_dir() + "/" + command + " 2>&1").c_str(), "r");
  std::array<char, 4096> buffer{};
  while (size_t n = std::fread(buffer.data(), 1, buffer.size(), pipe)) output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  return {WEXITSTATUS(status), output};
}

// [gpu] tests without a CUDA device: skipped with a warning on CPU machines (CI), but a failure
// where PRIME_REQUIRE_CUDA=1 (the GPU runner sets it), so a broken GPU setup cannot pass as green.
struct GpuDecision {
  bool run = false;
  std::string failure;  // non-empty: fail the test with this message
};

// The decision for a machine with or without CUDA, under the current PRIME_REQUIRE_CUDA.
inline GpuDecision gpu_decision(bool has_cuda) {
  const char* require = std::getenv("PRIME_REQUIRE_CUDA");
  const std::string value = require ? require : "";
  if (value != "" && value != "0" && value != "1")
    return {false, "PRIME_REQUIRE_CUDA must be 0 or 1, not '" + value + "'"};
  if (has_cuda) return {true, ""};
  if (value == "1") return {false, "no CUDA device, and PRIME_REQUIRE_CUDA=1 requires one"};
  return {false, ""};
}

// At the top of every [gpu] test: `if (!test::gpu_available_or_fail()) return;`
inline bool gpu_available_or_fail() {
  const GpuDecision decision = gpu_decision(at::hasCUDA());
  if (!decision.failure.empty()) FAIL(decision.failure);
  if (!decision.run) WARN("no CUDA device: skipped (PRIME_REQUIRE_CUDA=1 makes this a failure)");
  return decision.run;
}

// positions [rows.size(), T] of rows of packed documents of the given lengths (every row sums to
// the same T); `first` (optional) is each row's first position (a row may continue a document).
inline at::Tensor document_positions(const std::vector<std::vector<int64_t>>& rows,
                                     const std::vector<int64_t>& first = {}) {
  int64_t steps = 0;
  for (int64_t length : rows.front()) steps += length;
  at::Tensor positions = at::empty({static_cast<int64_t>(rows.size()), steps}, at::kLong);
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t t = 0;
    for (size_t d = 0; d < rows[r].size(); ++d)
      for (int64_t i = 0; i < rows[r][d]; ++i) positions[r][t++] = i + (d == 0 && !first.empty() ? first[r] : 0);
    REQUIRE(t == steps);
  }
  return positions;
}

}  // namespace prime::test
