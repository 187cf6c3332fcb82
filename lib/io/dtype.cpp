// Kept free of ATen: the header parser and the fuzzer link this file alone.
#include "io/dtype.h"

#include "util/error.h"

namespace prime::io {
namespace {

struct DTypeRow {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeRow kRows[] = {
    {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},     {DType::I8, "I8", 1},
    {DType::I16, "I16", 2},   {DType::U16, "U16", 2},   {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},   {DType::I64, "I64", 8},   {DType::U64, "U64", 8},
    {DType::F16, "F16", 2},   {DType::BF16, "BF16", 2}, {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},   {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
};

const DTypeRow& row(DType dtype) {
  for (const auto& candidate : kRows)
    if (candidate.dtype == dtype) return candidate;
  throw internal_error("unknown DType value ", static_cast<int>(dtype));
}

}  // namespace

DType parse_dtype(std::string_view name) {
  for (const auto& candidate : kRows)
    if (candidate.name == name) return candidate.dtype;
  std::string known;
  for (const auto& candidate : kRows) {
    if (!known.empty()) known += ' ';
    known += candidate.name;
  }
  throw user_error("unknown dtype \"", name, "\" (supported: ", known, ")");
}

std::string_view dtype_name(DType dtype) { return row(dtype).name; }

size_t dtype_size(DType dtype) { return row(dtype).size; }

}  // namespace prime::io
