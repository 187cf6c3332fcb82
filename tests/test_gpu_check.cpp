// The [gpu] tests' CUDA check: skip without a GPU on CI, fail without one on the GPU runner.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <optional>
#include <string>

#include "test_helpers.h"

namespace {

// Sets PRIME_REQUIRE_CUDA for one scope (unset for nullopt) and restores what was there.
class RequireCudaEnv {
 public:
  explicit RequireCudaEnv(const std::optional<std::string>& value) {
    if (const char* old = std::getenv("PRIME_REQUIRE_CUDA")) saved_ = old;
    if (value) ::setenv("PRIME_REQUIRE_CUDA", value->c_str(), 1);
    else ::unsetenv("PRIME_REQUIRE_CUDA");
  }
  ~RequireCudaEnv() {
    if (saved_) ::setenv("PRIME_REQUIRE_CUDA", saved_->c_str(), 1);
    else ::unsetenv("PRIME_REQUIRE_CUDA");
  }

 private:
  std::optional<std::string> saved_;
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
