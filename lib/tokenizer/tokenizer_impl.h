// Tokenizer internals shared by the loaders (tokenizer_load.cpp) and the encoder
// (tokenizer.cpp). Not part of the public interface.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_added.h"
#include "tokenizer/tokenizer_bpe.h"
#include "tokenizer/tokenizer_regex.h"

namespace prime::io {

// Ids are dense table indices; this bounds the tables a corrupt file can make us allocate.
inline constexpr int64_t kMaxTokenId = int64_t{1} << 24;

// What a loader fills in; Impl::finish() derives the lookup tables from it.
struct TokenizerSpec {
  std::vector<std::string> vocab;          // token string (GPT-2 alphabet) by id, "" = no token
  std::vector<detail::BpeMerge> merges;    // priority order
  detail::BpeOptions bpe_options;
  std::vector<detail::AddedToken> added;
  bool nfc = false;
  std::vector<detail::SplitRegex> splits;  // pre-tokenizer Split steps, in order
  bool add_prefix_space = false;           // ByteLevel: prepend ' ' to each piece lacking one
  bool byte_level_regex = false;           // ByteLevel use_regex: split by the GPT-2 regex
  std::optional<std::string> eos_token;    // explicit end-of-text token (tokenizer_config.json)
};

// The whole file; UserError naming `what` and the path when it cannot be read.
std::string read_text_file(const std::string& path, const char* what);

struct Tokenizer::Impl {
  std::unique_ptr<detail::BpeModel> bpe;
  bool nfc = false;
  std::vector<detail::SplitRegex> splits;
  bool add_prefix_space = false;
  std::optional<detail::SplitRegex> byte_level_split;
  detail::AddedTokenMatcher raw_added;         // added tokens with normalized == false
  detail::AddedTokenMatcher normalized_added;  // added tokens with normalized == true

  std::vector<std::string> id_token;       // tokenizer.json form
  std::vector<std::string> id_bytes;       // what decode emits for the id
  std::vector<uint8_t> id_present, id_special;
  std::unordered_map<std::string, int32_t> token_id;
  std::optional<int32_t> eos;

  // Builds everything from `spec`; throws UserError for inconsistent input.
  static std::shared_ptr<const Impl> finish(TokenizerSpec spec, const std::string& origin);

  void encode_text(std::string_view text, bool parse_special, std::vector<int32_t>& out) const;
  void encode_plain(std::string_view piece, size_t split_index, std::vector<int32_t>& out) const;
  void encode_byte_level(std::string_view piece, std::vector<int32_t>& out) const;
};

}  // namespace prime::io
