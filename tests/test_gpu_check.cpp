// The [gpu] tests' CUDA check: skip without a GPU on CI, fail without one on the GPU runner.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "test_helpers.h"

namespace {

// Sets PRIME_REQUIRE_CUDA for one scope (unset for nullopt) and restores what was there.
class RequireCudaEnv {
 public:
  explicit RequireCudaEnv(const std::optional<std::string>& value)
      : env_("PRIME_REQUIRE_CUDA", value ? value->c_str() : nullptr) {}

 private:
  prime::test::ScopedEnv env_;
};

}  // namespace

TEST_CASE("gpu check: skip without CUDA, fail without it when PRIME_REQUIRE_CUDA=1", "[gpu-check]") {
  using prime::test::gpu_decision;
  for (const std::optional<std::string> lenient : {std::optional<std::string>(), std::optional<std::string>("0"),
                                                   std::optional<std::string>("")}) {
    RequireCudaEnv env(lenient);
    CHECK_FALSE(gpu_decision(false).run);
    CHECK(gpu_decision(false).failure.empty());
    CHECK(gpu_decision(true).run);
    CHECK(gpu_decision(true).failure.empty());
  }
  {
    RequireCudaEnv env(std::string("1"));
    CHECK_FALSE(gpu_decision(false).run);
    CHECK(gpu_decision(false).failure == "no CUDA device, and PRIME_REQUIRE_CUDA=1 requires one");
    CHECK(gpu_decision(true).run);
    CHECK(gpu_decision(true).failure.empty());
  }
  {
    // A typo must not quietly mean "not required".
    RequireCudaEnv env(std::string("yes"));
    CHECK_FALSE(gpu_decision(false).failure.empty());
    CHECK_FALSE(gpu_decision(true).failure.empty());
  }
}

TEST_CASE("every [gpu] test starts with the CUDA check", "[gpu-check]") {
  // A [gpu] test with its own `if (!at::hasCUDA()) return;` would pass on the GPU runner without
  // a GPU; this keeps new ones on the shared check.
  const std::filesystem::path tests = std::filesystem::path(PRIME_SOURCE_DIR) / "tests";
  int gpu_tests = 0;
  for (const auto& entry : std::filesystem::directory_iterator(tests)) {
    if (entry.path().extension() != ".cpp") continue;
    std::ifstream in(entry.path());
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    for (size_t index = 0; index < lines.size(); ++index) {
      // The tags may sit on the line after the name.
      const std::string head = lines[index] + (index + 1 < lines.size() ? lines[index + 1] : "");
      const bool gpu_tag = head.find("\"[gpu]") != std::string::npos || head.find("][gpu]") != std::string::npos;
      if (lines[index].find("TEST_CASE(") == std::string::npos || !gpu_tag) continue;
      ++gpu_tests;
      bool checked = false;
      for (size_t next = index; next < std::min(lines.size(), index + 4); ++next)
        checked |= lines[next].find("gpu_available_or_fail()") != std::string::npos;
      INFO(entry.path().filename().string() << ":" << index + 1 << ": " << lines[index]);
      CHECK(checked);
    }
  }
  CHECK(gpu_tests >= 6);
}

TEST_CASE("no test name holds a semicolon, which ctest would split into two unmatched tests", "[gpu-check]") {
  const std::filesystem::path tests = std::filesystem::path(PRIME_SOURCE_DIR) / "tests";
  int names = 0;
  for (const auto& entry : std::filesystem::directory_iterator(tests)) {
    if (entry.path().extension() != ".cpp") continue;
    std::ifstream in(entry.path());
    int line_number = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_number;
      const size_t start = line.find("TEST_CASE(\"");
      if (start == std::string::npos) continue;
      const size_t name_start = start + 11, name_end = line.find('"', name_start);
      if (name_end == std::string::npos) continue;
      ++names;
      INFO(entry.path().filename().string() << ":" << line_number << ": " << line);
      CHECK(line.substr(name_start, name_end - name_start).find(';') == std::string::npos);
    }
  }
  CHECK(names > 100);
}

TEST_CASE("the CLI tests run the apps from PRIME_TEST_BIN_DIR where the GPU runner moved them", "[gpu-check]") {
  {
    const prime::test::ScopedEnv unset("PRIME_TEST_BIN_DIR", nullptr);
    CHECK(prime::test::bin_dir() == PRIME_BIN_DIR);
  }
  {
    const prime::test::ScopedEnv empty("PRIME_TEST_BIN_DIR", "");
    CHECK(prime::test::bin_dir() == PRIME_BIN_DIR);
  }
  const prime::test::ScopedEnv moved("PRIME_TEST_BIN_DIR", "/nonexistent/prime-apps");
  CHECK(prime::test::bin_dir() == "/nonexistent/prime-apps");
  CHECK(prime::test::run_cli("prime-bench --help").exit_code == 127);  // nothing there: the shell cannot find it
}
