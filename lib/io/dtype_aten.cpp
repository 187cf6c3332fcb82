// The ATen half of dtype.h, separate so the header parser links without LibTorch.
#include <c10/core/ScalarType.h>

#include "io/dtype.h"
#include "util/error.h"

namespace prime::io {

c10::ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::BOOL: return at::kBool;
    case DType::U8: return at::kByte;
    case DType::I8: return at::kChar;
    case DType::I16: return at::kShort;
    case DType::U16: return at::kUInt16;
    case DType::I32: return at::kInt;
    case DType::U32: return at::kUInt32;
    case DType::I64: return at::kLong;
    case DType::U64: return at::kUInt64;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::F32: return at::kFloat;
    case DType::F64: return at::kDouble;
    case DType::F8_E4M3: return at::kFloat8_e4m3fn;
    case DType::F8_E5M2: return at::kFloat8_e5m2;
  }
  throw internal_error("unknown DType value ", static_cast<int>(dtype));
}

DType from_scalar_type(c10::ScalarType type) {
  for (DType dtype : kAllDTypes)
    if (to_scalar_type(dtype) == type) return dtype;
  throw user_error("tensor type ", c10::toString(type), " cannot be stored in safetensors");
}

}  // namespace prime::io
