// Tokenizer throughput measurement behind `prime-bench tokenizer`.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace prime::io {

// A whole text file; FILE.xz is decompressed through `xz -dc` (Debian xz-utils).
std::string read_text_maybe_xz(const std::string& path);

// `text` cut at line ends into chunks of about `chunk_bytes` (documents, as a data pipeline
// would feed them).
std::vector<std::string_view> split_into_chunks(std::string_view text, size_t chunk_bytes);

struct EncodePass {
  int pass = 0;          // 0 is the cold pass (empty word cache)
  int threads = 1;
  int64_t bytes = 0;
  int64_t tokens = 0;
  double seconds = 0;
  double mb_per_s() const { return seconds > 0 ? bytes / seconds / 1e6 : 0; }
  double tokens_per_s() const { return seconds > 0 ? tokens / seconds : 0; }
};

// Encodes every chunk `passes` times over `threads` threads (chunks handed out in turn).
std::vector<EncodePass> bench_encode(const Tokenizer& tokenizer,
                                     const std::vector<std::string_view>& chunks, int threads,
                                     int passes);

void print_encode_passes(const std::vector<EncodePass>& passes, std::ostream& out);

}  // namespace prime::io
