// Added tokens (special or not) are cut out of the text before pre-tokenization: leftmost
// match, longest at that position, honouring HF's single_word / lstrip / rstrip flags.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace prime::io::detail {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool normalized = false;  // matched against normalized text (after NFC) rather than raw text
  bool lstrip = false;      // swallows whitespace on its left
  bool rstrip = false;      // swallows whitespace on its right
  bool single_word = false; // only matches when not inside a word
};

class AddedTokenMatcher {
 public:
  // `patterns[i]` is the text that matches `tokens[i]` (its content, NFC-normalized for
  // normalized tokens when the tokenizer normalizes).
  void build(const std::vector<AddedToken>& tokens, const std::vector<std::string>& patterns);
  bool empty() const { return tokens_.empty(); }

  // Calls emit(piece, id) for each piece of `text` in order: id -1 for plain text, the added
  // token's id for a match. With parse_special false, special tokens are left in the text.
  template <typename Emit>
  void split(std::string_view text, bool parse_special, Emit&& emit) const {
    if (tokens_.empty()) {
      if (!text.empty()) emit(text, -1);
      return;
    }
    size_t plain_start = 0, scan = 0;
    Match match;
    while (next_match(text, scan, parse_special, plain_start, match)) {
      if (match.start > plain_start) emit(text.substr(plain_start, match.start - plain_start), -1);
      emit(text.substr(match.start, match.end - match.start), match.id);
      plain_start = scan = match.end;
    }
    if (plain_start < text.size()) emit(text.substr(plain_start), -1);
  }

 private:
  struct Match {
    size_t start = 0, end = 0;
    int32_t id = -1;
  };
  struct Node {
    int32_t token = -1;  // index into tokens_ when a token ends here
    std::vector<std::pair<unsigned char, int32_t>> children;
  };
  // Next accepted match at or after `scan` (which it advances past rejected candidates);
  // `plain_start` bounds how far lstrip may reach back.
  bool next_match(std::string_view text, size_t& scan, bool parse_special, size_t plain_start,
                  Match& match) const;
  int32_t child(int32_t node, unsigned char byte) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;        // nodes_[0] is the root
  std::array<int32_t, 256> root_;  // first-byte dispatch, -1 when no token starts so
};

}  // namespace prime::io::detail
