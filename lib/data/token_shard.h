// Token shards: a 64-byte header and a body of little-endian token ids (u16 or u32), written
// atomically and read through mmap. Byte layout (all integers little-endian):
//
//   offset size field
//    0      8   magic "PRIMETOK"
//    8      4   u32 version (1)
//   12      4   u32 width: bytes per element, 2 (u16) or 4 (u32)
//   16      8   u64 count: elements in the body
//   24      8   u64 source_bytes: UTF-8 bytes of the text the ids came from (0 = unknown);
//               bits per byte = NLL / ln 2 / source_bytes
//   32      8   u64 documents: documents in the body (each ended by eos_id)
//   40      4   u32 eos_id (0xFFFFFFFF = none)
//   44      4   u32 vocab_size: ids are < vocab_size (0 = unknown)
//   48      4   u32 row_length: 0 = one stream; L > 0 = rows of L elements (packed windows)
//   52      4   u32 kind: 0 = token ids, 1 = position ids (position within its document)
//   56      8   reserved, written as zero
//   64          body: count elements of `width` bytes; the file ends exactly there
//
// A reader refuses (UserError) a wrong magic, an unknown version/width/kind, a row_length that
// does not divide count, and a file whose size is not exactly 64 + count * width.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "io/atomic_dir.h"

namespace prime::io {

inline constexpr char kTokenShardMagic[8] = {'P', 'R', 'I', 'M', 'E', 'T', 'O', 'K'};
inline constexpr uint32_t kTokenShardVersion = 1;
inline constexpr size_t kTokenShardHeaderBytes = 64;
inline constexpr uint32_t kNoEos = 0xFFFFFFFFu;

enum class ShardKind : uint32_t { kTokens = 0, kPositions = 1 };

struct TokenShardHeader {
  uint32_t width = 4;
  uint64_t count = 0;
  uint64_t source_bytes = 0;
  uint64_t documents = 0;
  uint32_t eos_id = kNoEos;
  uint32_t vocab_size = 0;
  uint32_t row_length = 0;
  ShardKind kind = ShardKind::kTokens;

  bool has_eos() const { return eos_id != kNoEos; }
};

// The 64 header bytes for `header`, and their parse (UserError naming `where` on a bad header).
std::vector<uint8_t> encode_shard_header(const TokenShardHeader& header);
TokenShardHeader decode_shard_header(const uint8_t* bytes, size_t size, const std::string& where);

// The narrowest width that holds ids < vocab_size: 2 when vocab_size <= 65536, else 4.
uint32_t width_for_vocab(int64_t vocab_size);

// Streams ids into an AtomicFile's "<dir>/.<name>.tmp-<pid>-<random>", then fsyncs and renames it
// over `path` in finish(). Destroyed without finish(), it removes the temporary file: a shard
// appears complete or not at all; SIGINT/SIGTERM remove it too (util/interrupt.h), and temporary
// files of killed runs for the same path are removed first. count is filled in by finish(); the
// other header fields come from `header`.
class TokenShardWriter {
 public:
  // overwrite: replace a file that appears at `path` meanwhile (callers check --force before);
  // flag names the output in errors.
  TokenShardWriter(std::filesystem::path path, TokenShardHeader header, bool overwrite = true,
                   const std::string& flag = "token shard");
  TokenShardWriter(const TokenShardWriter&) = delete;
  TokenShardWriter& operator=(const TokenShardWriter&) = delete;
  ~TokenShardWriter();

  // UserError when an id does not fit the width (or is >= vocab_size when that is known).
  void append(const uint32_t* ids, size_t n);
  void append(const std::vector<uint32_t>& ids) { append(ids.data(), ids.size()); }
  // Header fields that are only known at the end (source_bytes, documents).
  TokenShardHeader& header() { return header_; }
  uint64_t count() const { return count_; }
  void finish();
  // Temporary files of killed runs (named after dead pids) the constructor removed.
  const std::vector<std::filesystem::path>& removed_stale() const;

 private:
  void flush_buffer();
  std::filesystem::path path_;
  std::unique_ptr<io::AtomicFile> file_;  // the temporary file, until renamed
  TokenShardHeader header_;
  int fd_ = -1;
  std::vector<uint8_t> buffer_;
  uint64_t count_ = 0;
  bool finished_ = false;
};

// A read-only memory map of a shard. Copies share the mapping; tensors from tensor() keep it
// alive. Random access and window sampling never copy the body except into the returned ids.
class TokenShard {
 public:
  static TokenShard open(const std::filesystem::path& path);

  const TokenShardHeader& header() const { return header_; }
  const std::filesystem::path& path() const { return path_; }
  int64_t size() const { return static_cast<int64_t>(header_.count); }
  int64_t rows() const { return header_.row_length ? size() / header_.row_length : 0; }

  uint32_t at(int64_t index) const;
  // Elements [offset, offset + length) widened to int64 (what models take).
  at::Tensor slice(int64_t offset, int64_t length) const;
  // The whole body as a zero-copy read-only tensor of dtype uint16/uint32 ([count], or
  // [rows, row_length] for packed shards). Writing into it faults: the mapping is read-only.
  at::Tensor tensor() const;
  // `n` windows of `length` elements at seeded uniformly random offsets: int64 [n, length].
  at::Tensor sample_windows(int64_t n, int64_t length, uint64_t seed) const;
  // Copies [offset, offset + length) into out as uint32.
  void read(int64_t offset, int64_t length, uint32_t* out) const;

 private:
  struct Mapping;
  std::shared_ptr<const Mapping> mapping_;
  std::filesystem::path path_;
  TokenShardHeader header_;
  const uint8_t* body_ = nullptr;
};

}  // namespace prime::io
