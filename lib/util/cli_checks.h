// Value checks for the commands' flags, with messages a user reads: "--memory-gib: must be a
// finite number > 0, not '0'" where CLI11's own PositiveNumber names the range up to 1.8e308.
#pragma once

#include <CLI/CLI.hpp>

#include <cmath>
#include <string>

namespace prime {

namespace detail {

// A finite number that `accept` takes; `what` ("> 0") names the rule in the help and the message.
inline CLI::Validator finite_number_check(bool (*accept)(double), const std::string& what) {
  return CLI::Validator(
      [accept, what](std::string& text) -> std::string {
        try {
          size_t used = 0;
          const double value = std::stod(text, &used);
          if (used == text.size() && std::isfinite(value) && accept(value)) return "";
        } catch (const std::exception&) {
        }
        return "must be a finite number " + what + ", not '" + text + "'";
      },
      what);
}

}  // namespace detail

// A finite number > 0 (integer or not; an integer flag then refuses a fraction itself).
inline CLI::Validator positive_number() {
  return detail::finite_number_check([](double value) { return value > 0; }, "> 0");
}

// A finite number >= 0.
inline CLI::Validator non_negative_number() {
  return detail::finite_number_check([](double value) { return value >= 0; }, ">= 0");
}

}  // namespace prime
