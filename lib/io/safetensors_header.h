// safetensors header parsing and validation, free of ATen so the fuzzer can link it alone.
// Format: 8-byte little-endian u64 N, N bytes of UTF-8 JSON, then the data region.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "io/dtype.h"

namespace prime::io {

// Refused before anything is allocated or parsed (formats.md).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // relative to the start of the data region
  uint64_t nbytes() const { return end - begin; }
};

struct Header {
  std::vector<TensorInfo> tensors;  // sorted by begin
  std::map<std::string, std::string> metadata;
};

// Validates everything: JSON syntax, no duplicate keys at any depth, entry fields and types,
// known dtypes, non-negative shapes, bytes == product(shape) * dtype size, offsets tiling
// [0, data_size) exactly. Throws UserError whose message starts with `where`.
Header parse_header(std::string_view json, uint64_t data_size, const std::string& where);

// A whole file already in memory (or mapped): length prefix, header, data region.
struct ParsedFile {
  Header header;
  uint64_t data_start = 0;  // byte offset of the data region within the file
};
ParsedFile parse_file_bytes(std::string_view bytes, const std::string& where);

// Reads the 8-byte length prefix and checks it against the cap and the file size; returns N.
uint64_t read_header_length(std::string_view prefix, uint64_t file_size, const std::string& where);

// JSON parse that refuses duplicate object keys (nlohmann would keep one silently).
// Errors are UserErrors starting with `where`.
nlohmann::json parse_json_strict(std::string_view text, const std::string& where);

}  // namespace prime::io
