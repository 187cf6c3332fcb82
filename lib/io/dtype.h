// Element types of safetensors files and their mapping onto ATen scalar types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

// Opaque declaration so that the parsing side (and the fuzzer built from it) needs no ATen
// headers; it must agree with c10/core/ScalarType.h, which the compiler checks in dtype_aten.cpp.
namespace c10 {
enum class ScalarType : int8_t;
}

namespace prime::io {

// The safetensors dtype names, spelled as in the file format.
enum class DType { BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2 };

inline constexpr DType kAllDTypes[] = {
    DType::BOOL, DType::U8,  DType::I8,   DType::I16, DType::U16,     DType::I32,    DType::U32,
    DType::I64,  DType::U64, DType::F16,  DType::BF16, DType::F32,    DType::F64,    DType::F8_E4M3,
    DType::F8_E5M2};

// Throws a UserError naming `name` when it is not one of the dtypes above.
DType parse_dtype(std::string_view name);
std::string_view dtype_name(DType dtype);
size_t dtype_size(DType dtype);

// at::ScalarType is c10::ScalarType. from_scalar_type throws a UserError for types safetensors
// cannot hold (complex, quantized, ...).
c10::ScalarType to_scalar_type(DType dtype);
DType from_scalar_type(c10::ScalarType type);

}  // namespace prime::io
