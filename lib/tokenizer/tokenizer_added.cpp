#include "tokenizer/tokenizer_added.h"

#include "tokenizer/tokenizer_text.h"
#include "util/error.h"

namespace prime::io::detail {

void AddedTokenMatcher::build(const std::vector<AddedToken>& tokens,
                              const std::vector<std::string>& patterns) {
  PRIME_CHECK(tokens.size() == patterns.size());
  tokens_ = tokens;
  nodes_.assign(1, Node{});
  root_.fill(-1);
  for (size_t index = 0; index < tokens.size(); ++index) {
    const std::string& pattern = patterns[index];
    if (pattern.empty()) continue;  // an empty token can never be matched
    int32_t node = 0;
    for (size_t pos = 0; pos < pattern.size(); ++pos) {
      const auto byte = static_cast<unsigned char>(pattern[pos]);
      int32_t next = node == 0 ? root_[byte] : child(node, byte);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_.push_back(Node{});
        if (node == 0) root_[byte] = next;
        else nodes_[node].children.emplace_back(byte, next);
      }
      node = next;
    }
    // Two tokens with one pattern: the first wins (HF keeps one entry per content).
    if (nodes_[node].token < 0) nodes_[node].token = static_cast<int32_t>(index);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, unsigned char byte) const {
  for (const auto& [label, next] : nodes_[node].children)
    if (label == byte) return next;
  return -1;
}

bool AddedTokenMatcher::next_match(std::string_view text, size_t& scan, bool parse_special,
                                   size_t plain_start, Match& match) const {
  const size_t size = text.size();
  for (size_t start = scan; start < size; ++start) {
    int32_t node = root_[static_cast<unsigned char>(text[start])];
    if (node < 0) continue;
    int32_t best = nodes_[node].token;
    size_t best_end = start + 1;
    for (size_t pos = start + 1; pos < size; ++pos) {
      node = child(node, static_cast<unsigned char>(text[pos]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        best_end = pos + 1;
      }
    }
    if (best < 0) continue;
    const AddedToken& token = tokens_[best];
    // A rejected candidate still consumes its span: HF's matcher iterates non-overlapping
    // matches and filters them afterwards, so nothing inside one is looked at again.
    bool accept = parse_special || !token.special;
    if (accept && token.single_word) {
      size_t unused = 0;
      const bool word_before = start > 0 && is_word_char(previous_code_point(text, start, unused));
      size_t after = best_end;
      const bool word_after = best_end < size && is_word_char(next_code_point(text, after));
      accept = !word_before && !word_after;
    }
    if (!accept) {
      start = best_end - 1;
      continue;
    }
    size_t match_start = start, match_end = best_end;
    if (token.lstrip) {
      while (match_start > plain_start) {
        size_t previous = 0;
        if (!is_unicode_space(previous_code_point(text, match_start, previous))) break;
        match_start = previous;
      }
    }
    if (token.rstrip) {
      while (match_end < size) {
        size_t next = match_end;
        if (!is_unicode_space(next_code_point(text, next))) break;
        match_end = next;
      }
    }
    match = Match{match_start, match_end, token.id};
    scan = match_end;
    return true;
  }
  scan = size;
  return false;
}

}  // namespace prime::io::detail
