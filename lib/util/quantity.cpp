#include "util/quantity.h"

#include <cmath>
#include <stdexcept>
#include <utility>
#include <vector>

namespace prime {

std::optional<double> parse_quantity_text(const std::string& text) {
  constexpr double Ki = 1024.0, Mi = Ki * 1024, Gi = Mi * 1024, Ti = Gi * 1024;
  // Longest suffixes first, so "MiB" is not read as "B".
  static const std::vector<std::pair<std::string, double>> units = {
      {"KiB", Ki}, {"MiB", Mi}, {"GiB", Gi}, {"TiB", Ti}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
      {"K", Ki},   {"M", Mi},   {"B", Gi},   {"G", Gi},   {"k", Ki},   {"m", Mi},   {"b", Gi},   {"g", Gi}};
  double scale = 1;
  std::string number = text;
  for (const auto& [suffix, factor] : units) {
    if (text.size() > suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0) {
      scale = factor;
      number = text.substr(0, text.size() - suffix.size());
      break;
    }
  }
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(number, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (number.empty() || used != number.size() || !std::isfinite(value)) return std::nullopt;
  return value * scale;
}

}  // namespace prime
