#include "tokenizer/tokenizer_text.h"

#include <utf8proc.h>

#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <memory>

#include "util/error.h"

namespace prime::io::detail {
namespace {

// Length of the UTF-8 sequence at `data` (size bytes left) when valid; otherwise 0, with
// `invalid_length` set to the maximal invalid subpart (>= 1), the unit U+FFFD replaces.
size_t sequence_length(const unsigned char* data, size_t size, size_t& invalid_length) {
  const unsigned char lead = data[0];
  if (lead < 0x80) return 1;
  size_t needed = 0;
  unsigned char second_low = 0x80, second_high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    needed = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    needed = 2;
    if (lead == 0xE0) second_low = 0xA0;   // overlong
    if (lead == 0xED) second_high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    needed = 3;
    if (lead == 0xF0) second_low = 0x90;   // overlong
    if (lead == 0xF4) second_high = 0x8F;  // > U+10FFFF
  } else {
    invalid_length = 1;
    return 0;
  }
  for (size_t index = 1; index <= needed; ++index) {
    const unsigned char low = index == 1 ? second_low : 0x80;
    const unsigned char high = index == 1 ? second_high : 0xBF;
    if (index >= size || data[index] < low || data[index] > high) {
      invalid_length = index;
      return 0;
    }
  }
  return needed + 1;
}

bool all_ascii_word(const unsigned char* data) {
  uint64_t word;
  std::memcpy(&word, data, sizeof word);
  return (word & 0x8080808080808080ULL) == 0;
}

}  // namespace

bool is_valid_utf8(std::string_view text) {
  const auto* data = reinterpret_cast<const unsigned char*>(text.data());
  const size_t size = text.size();
  size_t pos = 0;
  while (pos < size) {
    if (pos + 8 <= size && all_ascii_word(data + pos)) {
      pos += 8;
      continue;
    }
    size_t invalid_length = 0;
    const size_t length = sequence_length(data + pos, size - pos, invalid_length);
    if (length == 0) return false;
    pos += length;
  }
  return true;
}

std::string utf8_lossy(std::string_view text) {
  const auto* data = reinterpret_cast<const unsigned char*>(text.data());
  std::string out;
  out.reserve(text.size() + 16);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t invalid_length = 0;
    const size_t length = sequence_length(data + pos, text.size() - pos, invalid_length);
    if (length > 0) {
      out.append(text.data() + pos, length);
      pos += length;
    } else {
      out += "\xEF\xBF\xBD";
      pos += invalid_length;
    }
  }
  return out;
}

bool may_change_under_nfc(std::string_view text) {
  // U+0300 (the first combining mark) is 0xCC 0x80; every code point below it has a lead byte
  // below 0xCC, and such characters are NFC-stable and never compose with each other.
  for (unsigned char byte : text)
    if (byte >= 0xCC) return true;
  return false;
}

namespace {

std::string utf8proc_nfc(std::string_view text) {
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t length =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   static_cast<utf8proc_ssize_t>(text.size()), &mapped,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(mapped, &std::free);
  if (length < 0) throw internal_error("NFC normalization failed: ", utf8proc_errmsg(length));
  return std::string(reinterpret_cast<const char*>(mapped), static_cast<size_t>(length));
}

size_t utf8_length(unsigned char lead) { return lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

}  // namespace

std::string nfc(std::string_view text) {
  // Code points below U+0300 are starters that are NFC-stable and never compose with what
  // precedes them, so NFC works independently on each side of one. Only the runs of code
  // points >= U+0300, with the character before each run, go through utf8proc; prose with
  // the odd dash or accented letter then costs little more than a copy.
  const auto* data = reinterpret_cast<const unsigned char*>(text.data());
  const size_t size = text.size();
  std::string out;
  size_t copied = 0, pos = 0;
  while (pos < size) {
    if (data[pos] < 0xCC) {  // ASCII, a lead byte below U+0300, or a continuation byte
      ++pos;
      continue;
    }
    size_t run_start = pos;
    if (run_start > copied) {
      do --run_start;
      while (run_start > copied && (data[run_start] & 0xC0) == 0x80);
    }
    size_t run_end = pos;
    while (run_end < size && data[run_end] >= 0xCC) run_end += utf8_length(data[run_end]);
    run_end = std::min(run_end, size);
    if (out.empty()) out.reserve(size + 16);
    out.append(text.data() + copied, run_start - copied);
    out += utf8proc_nfc(text.substr(run_start, run_end - run_start));
    copied = pos = run_end;
  }
  if (copied == 0) return std::string(text);
  out.append(text.data() + copied, size - copied);
  return out;
}

const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> table = [] {
    // Printable Latin-1 bytes map to themselves; the other 68 to U+0100.. in byte order, so
    // that every token in a byte-level vocabulary is printable text.
    std::array<std::string, 256> result;
    char32_t next_extra = 0x100;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                             (byte >= 0xAE && byte <= 0xFF);
      const char32_t code_point = printable ? static_cast<char32_t>(byte) : next_extra++;
      utf8proc_uint8_t buffer[4];
      const auto length = utf8proc_encode_char(static_cast<utf8proc_int32_t>(code_point), buffer);
      result[byte].assign(reinterpret_cast<const char*>(buffer), static_cast<size_t>(length));
    }
    return result;
  }();
  return table;
}

std::optional<std::string> unicode_to_bytes(std::string_view token) {
  // Every code point of the alphabet is below U+0144, so a small direct table suffices.
  static const std::array<int16_t, 0x144> code_point_to_byte = [] {
    std::array<int16_t, 0x144> result;
    result.fill(-1);
    const auto& table = byte_to_unicode();
    for (int byte = 0; byte < 256; ++byte) {
      size_t pos = 0;
      result[next_code_point(table[byte], pos)] = static_cast<int16_t>(byte);
    }
    return result;
  }();
  if (!is_valid_utf8(token)) return std::nullopt;
  std::string bytes;
  bytes.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    const char32_t code_point = next_code_point(token, pos);
    if (code_point >= code_point_to_byte.size() || code_point_to_byte[code_point] < 0)
      return std::nullopt;
    bytes.push_back(static_cast<char>(code_point_to_byte[code_point]));
  }
  return bytes;
}

char32_t next_code_point(std::string_view text, size_t& pos) {
  const auto* data = reinterpret_cast<const unsigned char*>(text.data());
  const unsigned char lead = data[pos];
  if (lead < 0x80) {
    ++pos;
    return lead;
  }
  const int length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
  char32_t code_point = lead & (0x7F >> length);
  for (int index = 1; index < length; ++index) code_point = (code_point << 6) | (data[pos + index] & 0x3F);
  pos += length;
  return code_point;
}

char32_t previous_code_point(std::string_view text, size_t end, size_t& start) {
  start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  size_t pos = start;
  return next_code_point(text, pos);
}

bool is_unicode_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (c == 0x200C || c == 0x200D) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

}  // namespace prime::io::detail
