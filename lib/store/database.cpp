// SqlValue conversions shared by both backends (PostgreSQL hands every value over as text).
#include <cmath>
#include <cstdlib>
#include <limits>

#include "store/database.h"
#include "util/error.h"

namespace prime::store::detail {

bool is_null(const SqlValue& value) { return std::holds_alternative<std::monostate>(value); }

int64_t as_int(const SqlValue& value) {
  if (const auto* number = std::get_if<int64_t>(&value)) return *number;
  if (const auto* real = std::get_if<double>(&value)) return static_cast<int64_t>(*real);
  if (const auto* text = std::get_if<std::string>(&value)) return std::strtoll(text->c_str(), nullptr, 10);
  return 0;
}

double as_double(const SqlValue& value) {
  if (const auto* real = std::get_if<double>(&value)) return *real;
  if (const auto* number = std::get_if<int64_t>(&value)) return static_cast<double>(*number);
  if (const auto* text = std::get_if<std::string>(&value)) return std::strtod(text->c_str(), nullptr);
  return std::numeric_limits<double>::quiet_NaN();
}

std::string as_text(const SqlValue& value) {
  if (const auto* text = std::get_if<std::string>(&value)) return *text;
  if (const auto* number = std::get_if<int64_t>(&value)) return std::to_string(*number);
  if (const auto* real = std::get_if<double>(&value)) return std::to_string(*real);
  return "";
}

SqlValue real_or_null(double value) {
  if (!std::isfinite(value)) return std::monostate{};
  return value;
}

}  // namespace prime::store::detail
