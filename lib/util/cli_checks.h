// Value checks for the commands' flags, with messages a user reads: "--memory-gib: must be a
// number > 0, not '0'" where CLI11's own PositiveNumber names the range up to 1.8e308.
#pragma once

#include <CLI/CLI.hpp>

#include <cmath>
#include <string>

namespace prime {

// A finite number > 0 (integer or not; an integer flag then refuses a fraction itself).
inline CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          size_t used = 0;
          const double value = std::stod(text, &used);
          if (used == text.size() && std::isfinite(value) && value > 0) return "";
        } catch (const std::exception&) {
        }
        return "must be a finite number > 0, not '" + text + "'";
      },
      "> 0");
}

}  // namespace prime
