// Text helpers for the tokenizer: UTF-8 validity, NFC (utf8proc), GPT-2's byte<->unicode table,
// and the character classes HF's added-token matching uses (\s, \w of Rust's regex crate).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace prime::io::detail {

// True when `text` is well-formed UTF-8 (no surrogates, no overlongs, <= U+10FFFF).
bool is_valid_utf8(std::string_view text);
// Invalid sequences replaced by U+FFFD, one per maximal invalid subpart (Rust's from_utf8_lossy,
// Python's errors="replace").
std::string utf8_lossy(std::string_view text);

// NFC of valid UTF-8. Text without any code point >= U+0300 is returned unchanged without
// calling utf8proc: such text is always NFC, and that covers almost all English.
std::string nfc(std::string_view text);
bool may_change_under_nfc(std::string_view text);

// GPT-2's reversible mapping of the 256 byte values to printable code points, as UTF-8.
const std::array<std::string, 256>& byte_to_unicode();
// Inverse of byte_to_unicode over a whole token; nullopt when some character is outside the
// 256-character alphabet (e.g. a literal added token like "<|im_start|>" is fine, "▁x" is not).
std::optional<std::string> unicode_to_bytes(std::string_view token);

// Decodes one code point at `pos` (valid UTF-8 assumed) and advances `pos`.
char32_t next_code_point(std::string_view text, size_t& pos);
// The code point ending at `end` (valid UTF-8 assumed), with its start in `start`.
char32_t previous_code_point(std::string_view text, size_t end, size_t& start);

// Unicode White_Space (Rust regex \s).
bool is_unicode_space(char32_t c);
// Rust regex \w: letters, marks, decimal and letter numbers, connector punctuation, ZWJ/ZWNJ.
bool is_word_char(char32_t c);

}  // namespace prime::io::detail
