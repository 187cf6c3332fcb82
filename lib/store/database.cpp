// SqlValue conversions shared by both backends (PostgreSQL hands every value over as text).
#include <cmath>
#include <algorithm>
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

void Database::insert_rows(const std::string& table, const std::vector<std::string>& columns,
                           const std::vector<SqlValue>& values) {
  // 200 rows x a few columns stays far below both backends' parameter limits.
  constexpr size_t kRowsPerInsert = 200;
  const size_t width = columns.size(), rows = values.size() / width;
  std::string head = "INSERT INTO " + table + " (", tuple = "(";
  for (size_t column = 0; column < width; ++column) {
    head += (column ? ", " : "") + columns[column];
    tuple += column ? ", ?" : "?";
  }
  head += ") VALUES ";
  tuple += ")";
  for (size_t begin = 0; begin < rows; begin += kRowsPerInsert) {
    const size_t count = std::min(kRowsPerInsert, rows - begin);
    std::string sql = head;
    for (size_t row = 0; row < count; ++row) sql += (row ? ", " : "") + tuple;
    exec(sql, std::vector<SqlValue>(values.begin() + begin * width, values.begin() + (begin + count) * width));
  }
}

}  // namespace prime::store::detail
