// libFuzzer target for the safetensors header parser. The first byte picks the input's form:
//   even: the rest is a whole safetensors file (length prefix, header, data) -> parse_file_bytes
//   odd:  bytes 1-2 are the data size (u16 LE), the rest is header JSON     -> parse_header
// (the second form lets the fuzzer reach the tiling checks without matching a length prefix).
// Contract under test: any input either parses into a header that satisfies every invariant,
// or throws prime::UserError. Any other exception, crash, leak or UB is a finding.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "io/safetensors_header.h"
#include "util/error.h"

namespace {

using prime::io::Header;

void require(bool condition) {
  if (!condition) __builtin_trap();
}

void check_invariants(const Header& header, uint64_t data_size) {
  uint64_t cursor = 0;
  for (const auto& info : header.tensors) {
    require(!info.name.empty() && info.name != "__metadata__");
    require(info.begin == cursor && info.end >= info.begin);
    cursor = info.end;
    uint64_t bytes = prime::io::dtype_size(info.dtype);
    for (int64_t extent : info.shape) {
      require(extent >= 0);
      bytes *= static_cast<uint64_t>(extent);  // cannot overflow once the parser accepted it
    }
    require(bytes == info.nbytes());
    require(prime::io::parse_dtype(prime::io::dtype_name(info.dtype)) == info.dtype);
  }
  require(cursor == data_size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] % 2 == 0) {
      const auto parsed = prime::io::parse_file_bytes(input, "fuzz");
      require(parsed.data_start >= 8 && parsed.data_start <= input.size());
      check_invariants(parsed.header, input.size() - parsed.data_start);
    } else if (input.size() >= 2) {
      uint16_t data_size = 0;
      std::memcpy(&data_size, input.data(), 2);
      check_invariants(prime::io::parse_header(input.substr(2), data_size, "fuzz"), data_size);
    }
  } catch (const prime::UserError&) {
    // Refusing bad input is the expected outcome.
  }
  return 0;
}
