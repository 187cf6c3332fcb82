// The kernels' environment switches (kernels/common/switches.h): unset or empty takes the first value,
// each listed text selects its value, anything else is a UserError naming the variable and every value
// with what it selects; the opt-out switches built on it take only "1" and "0".
#include <catch2/catch.hpp>

#include "kernels/common/policy.h"
#include "kernels/common/switches.h"
#include "test_helpers.h"
#include "util/error.h"

namespace prime {
namespace {

enum class Flavour { Plain, Salted, Smoked };

Flavour flavour() {
  return kernels::environment_switch<Flavour>("PRIME_TEST_FLAVOUR", {{"plain", Flavour::Plain, "nothing added"},
                                                                     {"salted", Flavour::Salted, "salt"},
                                                                     {"smoked", Flavour::Smoked, "smoke"}});
}

}  // namespace

TEST_CASE("kernel switches: unset or empty takes the first value", "[kernels][switches]") {
  {
    const test::ScopedEnv unset("PRIME_TEST_FLAVOUR", nullptr);
    CHECK(flavour() == Flavour::Plain);
  }
  const test::ScopedEnv empty("PRIME_TEST_FLAVOUR", "");
  CHECK(flavour() == Flavour::Plain);
}

TEST_CASE("kernel switches: each text selects its value", "[kernels][switches]") {
  for (const auto& [text, expected] :
       {std::pair{"plain", Flavour::Plain}, std::pair{"salted", Flavour::Salted}, std::pair{"smoked", Flavour::Smoked}}) {
    const test::ScopedEnv set("PRIME_TEST_FLAVOUR", text);
    CHECK(flavour() == expected);
  }
}

TEST_CASE("kernel switches: another value names the variable and every value", "[kernels][switches]") {
  for (const char* text : {"Salted", "salted ", "peppered", "1"}) {
    const test::ScopedEnv bad("PRIME_TEST_FLAVOUR", text);
    CHECK_THROWS_AS(flavour(), UserError);
    CHECK_THROWS_WITH(flavour(), Catch::Matchers::Equals(
                                     std::string("PRIME_TEST_FLAVOUR=") + text +
                                     ": must be \"plain\" (nothing added, the default), \"salted\" (salt) or "
                                     "\"smoked\" (smoke)"));
  }
}

TEST_CASE("kernel switches: the opt-outs take only 1 and 0", "[kernels][switches]") {
  {
    const test::ScopedEnv off("PRIME_KERNELS_POISON", "0");
    CHECK_NOTHROW(kernels::poison_outputs());
  }
  const test::ScopedEnv bad("PRIME_KERNELS_POISON", "yes");
  CHECK_THROWS_WITH(kernels::poison_outputs(), Catch::Matchers::Contains("PRIME_KERNELS_POISON=yes"));
}

}  // namespace prime
