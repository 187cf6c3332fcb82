// PCRE2 (UTF + UCP, JIT when available) wrapper for pre-tokenizer splits. The compiled pattern
// is shared read-only; match scratch space is per thread, so matching is thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>

namespace prime::io::detail {

// `pattern` with \s and \S spelled out as Oniguruma (HF's regex engine) defines them.
std::string oniguruma_compatible(const std::string& pattern);

class SplitRegex {
 public:
  // `literal`: match `pattern` verbatim (HF Split with a "String" pattern). Throws UserError
  // for a pattern PCRE2 rejects.
  SplitRegex(const std::string& pattern, bool literal);

  // First match at or after byte `offset` of `text` (valid UTF-8; not re-checked).
  bool find(std::string_view text, size_t offset, size_t& start, size_t& end) const;

  // HF's "Isolated" split: every match and every gap between matches, in order, empties
  // dropped. After an empty match the search resumes one character later, as Oniguruma does.
  template <typename Emit>
  void for_each_piece(std::string_view text, Emit&& emit) const {
    size_t previous_end = 0, offset = 0, start = 0, end = 0;
    while (offset <= text.size() && find(text, offset, start, end)) {
      if (start > previous_end) emit(text.substr(previous_end, start - previous_end));
      if (end > start) {
        emit(text.substr(start, end - start));
        previous_end = end;
        offset = end;
      } else {
        if (end >= text.size()) break;
        offset = end + 1;
        while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80)
          ++offset;
        previous_end = start;
      }
    }
    if (previous_end < text.size()) emit(text.substr(previous_end));
  }

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  std::shared_ptr<void> code_;  // pcre2_code_8
};

}  // namespace prime::io::detail
