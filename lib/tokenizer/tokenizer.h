// Byte-level BPE tokenizer that reproduces Hugging Face `tokenizers` id for id: GPT-2, Qwen2/3,
// Llama-3 and other tokenizer.json files whose model is BPE over GPT-2's byte->unicode alphabet,
// and tiktoken rank files (Qwen's qwen.tiktoken) turned into the same BPE.
//
// Pipeline (as in HF): added tokens that are not normalized are cut out of the raw text; each
// remaining piece is NFC-normalized (when configured), normalized added tokens are cut out; the
// rest is split by the pre-tokenizer regexes and every word is merged by BPE over its bytes.
// Invalid UTF-8 in the input is replaced by U+FFFD first (what Python's errors="replace" does).
//
// A Tokenizer is immutable once built; encode/decode are const and safe to call from many
// threads at once (each thread keeps its own cache of merged words). Copies share state.
//
// Known differences from HF, all outside real-world text: PCRE2 10.42 knows Unicode 14, so
// letters and digits first assigned in Unicode 15-16 split differently; utf8proc's NFC is
// Unicode 15 while HF's is older, so stacked combining marks added since Unicode 11 (some
// Arabic Quranic marks, a few Indic viramas) are reordered here and not there.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace prime::io {

// Split regexes of common byte-level tokenizers (HF pre_tokenizer Split, behaviour Isolated).
inline constexpr const char* kQwen2SplitRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kLlama3SplitRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// The regex HF's ByteLevel pre-tokenizer applies itself when use_regex is true.
inline constexpr const char* kGpt2SplitRegex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Qwen2/Qwen2.5 special tokens, ids from 151643 (right after qwen.tiktoken's last rank).
std::vector<std::pair<std::string, int32_t>> qwen2_special_tokens();

class Tokenizer {
 public:
  // By path: a tokenizer.json, a directory holding one, or a *.tiktoken file (read as Qwen2:
  // kQwen2SplitRegex, NFC, qwen2_special_tokens()).
  static Tokenizer from_file(const std::string& path);

  // A HF tokenizer.json with a BPE model and byte-level pre-tokenizer/decoder. The end-of-text
  // token comes from a tokenizer_config.json next to it when present ("eos_token"), else from
  // the first known name among the added tokens (<|endoftext|>, <|end_of_text|>, </s>, <eos>).
  // Throws UserError naming the file and the unsupported or malformed part.
  static Tokenizer from_json_file(const std::string& path);
  // Same from the JSON text itself; `origin` names it in error messages.
  static Tokenizer from_json_string(const std::string& json_text,
                                    const std::string& origin = "<string>");

  // A tiktoken rank file (base64 token, space, rank per line). The BPE merges are derived from
  // the ranks the way HF's tiktoken conversion does; special tokens are matched before
  // splitting. tiktoken itself looks a whole word up before merging, which is HF's
  // ignore_merges (Llama-3 sets it, Qwen2 does not).
  static Tokenizer from_tiktoken(const std::string& ranks_path, std::string regex,
                                 std::vector<std::pair<std::string, int32_t>> special_tokens,
                                 bool nfc, bool ignore_merges = false);

  // Ids for `text`. With parse_special false, special tokens in the text are encoded as plain
  // text (HF's encode_special_tokens); non-special added tokens still match. Adds no BOS/EOS.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;

  // Text for `ids`; ids that name no token are skipped (as HF does). Byte sequences that are
  // not valid UTF-8 (e.g. half a character) come out as U+FFFD, as in HF.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  // One past the largest id (model vocabulary and added tokens): the embedding rows needed.
  int64_t vocab_size() const;
  // Token strings are in the tokenizer.json form (bytes mapped to GPT-2's printable alphabet,
  // e.g. "Ġthe"); added tokens are their literal content (id_to_token gives a normalized
  // added token in NFC, as HF does).
  std::optional<int32_t> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  std::optional<int32_t> eos_id() const;
  bool is_special(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace prime::io
