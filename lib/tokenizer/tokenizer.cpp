#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/tokenizer_text.h"
#include "util/error.h"

namespace prime::io {

std::vector<std::pair<std::string, int32_t>> qwen2_special_tokens() {
  static const char* const names[] = {
      "<|endoftext|>",  "<|im_start|>",     "<|im_end|>",        "<|object_ref_start|>",
      "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",      "<|quad_start|>",
      "<|quad_end|>",   "<|vision_start|>", "<|vision_end|>",    "<|vision_pad|>",
      "<|image_pad|>",  "<|video_pad|>",    "<tool_call>",       "</tool_call>",
      "<|fim_prefix|>", "<|fim_middle|>",   "<|fim_suffix|>",    "<|fim_pad|>",
      "<|repo_name|>",  "<|file_sep|>"};
  std::vector<std::pair<std::string, int32_t>> tokens;
  int32_t id = 151643;
  for (const char* name : names) tokens.emplace_back(name, id++);
  return tokens;
}

std::shared_ptr<const Tokenizer::Impl> Tokenizer::Impl::finish(TokenizerSpec spec,
                                                               const std::string& origin) {
  auto impl = std::make_shared<Impl>();
  int64_t size = static_cast<int64_t>(spec.vocab.size());
  for (const auto& token : spec.added) {
    if (token.id < 0 || token.id >= kMaxTokenId)
      throw user_error(origin, ": added token '", token.content, "' has an invalid id ", token.id);
    size = std::max<int64_t>(size, int64_t{token.id} + 1);
  }
  impl->id_token.assign(size, std::string());
  impl->id_present.assign(size, 0);
  impl->id_special.assign(size, 0);

  // The model vocabulary, then added tokens on top (HF looks added tokens up first).
  detail::BytesIdMap model_ids;
  model_ids.reserve(spec.vocab.size());
  for (size_t id = 0; id < spec.vocab.size(); ++id) {
    if (spec.vocab[id].empty()) continue;
    impl->id_token[id] = spec.vocab[id];
    impl->id_present[id] = 1;
    model_ids.insert(spec.vocab[id], static_cast<int32_t>(id));
    impl->token_id.emplace(spec.vocab[id], static_cast<int32_t>(id));
  }
  for (const auto& token : spec.added) {
    // HF shows and decodes a normalized added token in its normalized form, but looks it up
    // by its content.
    impl->id_token[token.id] = token.normalized && spec.nfc ? detail::nfc(token.content) : token.content;
    impl->id_present[token.id] = 1;
    impl->id_special[token.id] = token.special;
    impl->token_id[token.content] = token.id;
  }
  // HF's ByteLevel decoder: a token spelled in the byte alphabet becomes its bytes; any other
  // token (e.g. an added "<|im_start|>" is fine, but "\n\n" is not) is emitted verbatim.
  impl->id_bytes.resize(size);
  for (int64_t id = 0; id < size; ++id) {
    if (!impl->id_present[id]) continue;
    auto bytes = detail::unicode_to_bytes(impl->id_token[id]);
    impl->id_bytes[id] = bytes ? std::move(*bytes) : impl->id_token[id];
  }

  std::array<int32_t, 256> byte_ids;
  for (int byte = 0; byte < 256; ++byte)
    byte_ids[byte] = model_ids.find(detail::byte_to_unicode()[byte]).value_or(-1);
  detail::BytesIdMap whole_words;
  if (spec.bpe_options.ignore_merges) {
    whole_words.reserve(spec.vocab.size());
    for (size_t id = 0; id < spec.vocab.size(); ++id)
      if (auto bytes = detail::unicode_to_bytes(spec.vocab[id]); bytes && !bytes->empty())
        whole_words.insert(*bytes, static_cast<int32_t>(id));
  }
  impl->bpe = std::make_unique<detail::BpeModel>(byte_ids, spec.merges, std::move(whole_words),
                                                 spec.bpe_options);

  impl->nfc = spec.nfc;
  impl->splits = std::move(spec.splits);
  impl->add_prefix_space = spec.add_prefix_space;
  if (spec.byte_level_regex) impl->byte_level_split.emplace(kGpt2SplitRegex, false);

  std::vector<detail::AddedToken> raw, normalized;
  std::vector<std::string> raw_patterns, normalized_patterns;
  for (const auto& token : spec.added) {
    if (token.normalized) {
      normalized.push_back(token);
      normalized_patterns.push_back(spec.nfc ? detail::nfc(token.content) : token.content);
    } else {
      raw.push_back(token);
      raw_patterns.push_back(token.content);
    }
  }
  impl->raw_added.build(raw, raw_patterns);
  impl->normalized_added.build(normalized, normalized_patterns);

  if (spec.eos_token) {
    auto found = impl->token_id.find(*spec.eos_token);
    if (found != impl->token_id.end()) impl->eos = found->second;
  }
  for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"}) {
    if (impl->eos) break;
    auto found = impl->token_id.find(name);
    if (found != impl->token_id.end()) impl->eos = found->second;
  }
  return impl;
}

void Tokenizer::Impl::encode_text(std::string_view text, bool parse_special,
                                  std::vector<int32_t>& out) const {
  raw_added.split(text, parse_special, [&](std::string_view piece, int32_t id) {
    if (id >= 0) {
      out.push_back(id);
      return;
    }
    std::string normalized;
    if (nfc && detail::may_change_under_nfc(piece)) {
      normalized = detail::nfc(piece);
      piece = normalized;
    }
    normalized_added.split(piece, parse_special, [&](std::string_view plain, int32_t plain_id) {
      if (plain_id >= 0) out.push_back(plain_id);
      else encode_plain(plain, 0, out);
    });
  });
}

void Tokenizer::Impl::encode_plain(std::string_view piece, size_t split_index,
                                   std::vector<int32_t>& out) const {
  if (split_index < splits.size()) {
    splits[split_index].for_each_piece(
        piece, [&](std::string_view part) { encode_plain(part, split_index + 1, out); });
    return;
  }
  if (add_prefix_space && piece.front() != ' ') {
    std::string spaced;
    spaced.reserve(piece.size() + 1);
    spaced += ' ';
    spaced += piece;
    encode_byte_level(spaced, out);
  } else {
    encode_byte_level(piece, out);
  }
}

void Tokenizer::Impl::encode_byte_level(std::string_view piece, std::vector<int32_t>& out) const {
  if (byte_level_split)
    byte_level_split->for_each_piece(piece, [&](std::string_view word) { bpe->encode_word(word, out); });
  else
    bpe->encode_word(piece, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (detail::is_valid_utf8(text)) {
    impl_->encode_text(text, parse_special, ids);
  } else {
    const std::string repaired = detail::utf8_lossy(text);
    impl_->encode_text(repaired, parse_special, ids);
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string bytes;
  const int64_t size = static_cast<int64_t>(impl_->id_bytes.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= size || !impl_->id_present[id]) continue;
    if (skip_special && impl_->id_special[id]) continue;
    bytes += impl_->id_bytes[id];
  }
  return detail::is_valid_utf8(bytes) ? bytes : detail::utf8_lossy(bytes);
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_token.size()); }

std::optional<int32_t> Tokenizer::token_to_id(const std::string& token) const {
  auto found = impl_->token_id.find(token);
  if (found == impl_->token_id.end()) return std::nullopt;
  return found->second;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->id_present[id]) return std::nullopt;
  return impl_->id_token[id];
}

std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->id_special[id];
}

}  // namespace prime::io
