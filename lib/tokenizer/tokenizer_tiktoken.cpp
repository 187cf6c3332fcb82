// A tiktoken rank file turned into the BPE that HF's tiktoken conversion produces: a token of
// rank r gets the merge (a, b) when running tiktoken's own merge loop on its bytes, limited to
// ranks below r, ends in exactly the two parts a and b. Merge priority is the token's rank.
#include <charconv>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/tokenizer_text.h"
#include "util/error.h"

namespace prime::io {
namespace {

std::optional<std::string> decode_base64(std::string_view text) {
  static const std::array<int8_t, 256> values = [] {
    std::array<int8_t, 256> table;
    table.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int index = 0; index < 64; ++index) table[static_cast<unsigned char>(alphabet[index])] = index;
    return table;
  }();
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  if (text.empty() || text.size() % 4 == 1) return std::nullopt;
  std::string bytes;
  bytes.reserve(text.size() * 3 / 4);
  uint32_t buffer = 0;
  int bits = 0;
  for (char c : text) {
    const int value = values[static_cast<unsigned char>(c)];
    if (value < 0) return std::nullopt;
    buffer = (buffer << 6) | static_cast<uint32_t>(value);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push_back(static_cast<char>((buffer >> bits) & 0xFF));
    }
  }
  return bytes;
}

// tiktoken's merge loop on `token` (lowest-ranked adjacent pair first, leftmost on ties), using
// only merges of rank below `max_rank`. Returns the start offsets of the final parts.
std::vector<size_t> split_by_lower_ranks(std::string_view token, int32_t max_rank,
                                         const detail::BytesIdMap& ranks) {
  std::vector<size_t> starts(token.size());
  for (size_t index = 0; index < token.size(); ++index) starts[index] = index;
  while (starts.size() > 1) {
    size_t best_index = 0;
    int32_t best_rank = max_rank;
    for (size_t index = 0; index + 1 < starts.size(); ++index) {
      const size_t end = index + 2 < starts.size() ? starts[index + 2] : token.size();
      const auto rank = ranks.find(token.substr(starts[index], end - starts[index]));
      if (rank && *rank < best_rank) {
        best_rank = *rank;
        best_index = index;
      }
    }
    if (best_rank == max_rank) break;
    starts.erase(starts.begin() + static_cast<std::ptrdiff_t>(best_index) + 1);
  }
  return starts;
}

}  // namespace

Tokenizer Tokenizer::from_tiktoken(const std::string& ranks_path, std::string regex,
                                   std::vector<std::pair<std::string, int32_t>> special_tokens,
                                   bool nfc, bool ignore_merges) {
  const std::string text = read_text_file(ranks_path, "tiktoken rank file");
  std::vector<std::string> tokens;  // raw bytes by rank
  detail::BytesIdMap ranks;
  ranks.reserve(text.size() / 16);
  size_t line_start = 0, line_number = 0;
  while (line_start < text.size()) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    std::string_view line(text.data() + line_start, line_end - line_start);
    line_start = line_end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    auto bad_line = [&](const char* why) {
      return user_error(ranks_path, ":", line_number, ": ", why, " (expected '<base64 token> <rank>'): '",
                        std::string(line.substr(0, 80)), "'");
    };
    const size_t space = line.find(' ');
    if (space == std::string_view::npos) throw bad_line("no space");
    const auto bytes = decode_base64(line.substr(0, space));
    if (!bytes) throw bad_line("invalid base64 token");
    const std::string_view rank_text = line.substr(space + 1);
    int64_t rank = -1;
    const auto [end, error] = std::from_chars(rank_text.data(), rank_text.data() + rank_text.size(), rank);
    if (error != std::errc() || end != rank_text.data() + rank_text.size() || rank < 0 ||
        rank >= kMaxTokenId)
      throw bad_line("invalid rank");
    if (static_cast<size_t>(rank) >= tokens.size()) tokens.resize(rank + 1);
    if (!tokens[rank].empty()) throw bad_line("rank given twice");
    if (!ranks.insert(*bytes, static_cast<int32_t>(rank))) throw bad_line("token given twice");
    tokens[rank] = *bytes;
  }
  if (ranks.size() == 0) throw user_error(ranks_path, ": no ranks in the tiktoken file");

  TokenizerSpec spec;
  spec.vocab.resize(tokens.size());
  const auto& alphabet = detail::byte_to_unicode();
  for (size_t rank = 0; rank < tokens.size(); ++rank) {
    const std::string& token = tokens[rank];
    for (unsigned char byte : token) spec.vocab[rank] += alphabet[byte];
    if (token.size() < 2) continue;
    const std::vector<size_t> parts = split_by_lower_ranks(token, static_cast<int32_t>(rank), ranks);
    if (parts.size() != 2) continue;  // not reachable by merging: tiktoken never produces it either
    const std::string_view whole(token);
    spec.merges.push_back({*ranks.find(whole.substr(0, parts[1])), *ranks.find(whole.substr(parts[1])),
                           static_cast<int32_t>(rank)});
  }

  for (auto& [content, id] : special_tokens) {
    if (id < 0 || id >= kMaxTokenId)
      throw user_error("special token '", content, "' has an invalid id ", id);
    if (static_cast<size_t>(id) < tokens.size() && !tokens[id].empty())
      throw user_error("special token '", content, "' id ", id, " is already rank of a token in ", ranks_path);
    detail::AddedToken token;
    token.content = content;
    token.id = id;
    token.special = true;
    spec.added.push_back(std::move(token));
  }
  spec.nfc = nfc;
  if (!regex.empty()) spec.splits.emplace_back(regex, false);
  spec.bpe_options.ignore_merges = ignore_merges;
  return Tokenizer(Impl::finish(std::move(spec), ranks_path));
}

}  // namespace prime::io
