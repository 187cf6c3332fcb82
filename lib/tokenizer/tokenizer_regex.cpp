#include "tokenizer/tokenizer_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "util/error.h"

namespace prime::io::detail {
namespace {

// Scratch space PCRE2 needs per match call; one set per thread, reused for every pattern. Only
// the overall match offsets are read, so a one-pair ovector serves any pattern.
struct ThreadMatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;

  ThreadMatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    // The default 32 KiB JIT stack can run out on long runs of one character class; the
    // stack grows on demand up to the maximum.
    jit_stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr);
    if (!data || !context || !jit_stack) throw internal_error("PCRE2: out of memory");
    pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  ThreadMatchState(const ThreadMatchState&) = delete;
  ThreadMatchState& operator=(const ThreadMatchState&) = delete;
};

ThreadMatchState& thread_match_state() {
  thread_local ThreadMatchState state;
  return state;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof buffer);
  return reinterpret_cast<const char*>(buffer);
}

}  // namespace

std::string oniguruma_compatible(const std::string& pattern) {
  // HF compiles these patterns with Oniguruma, whose Unicode \s is U+0009..U+000D, U+0085 and
  // the Z categories. PCRE2's \s adds U+180E (MONGOLIAN VOWEL SEPARATOR, a format character
  // since Unicode 6.3), which changes how text around it splits; spell the class out instead.
  // (\S inside a class has no spelled-out form and is left alone; no known tokenizer uses it.)
  static const std::string space_items = "\\t-\\r\\x{85}\\p{Z}";
  std::string out;
  out.reserve(pattern.size() + 32);
  bool in_class = false;
  size_t class_start = 0;  // where the class body starts: a ']' right there is a literal
  for (size_t pos = 0; pos < pattern.size(); ++pos) {
    const char c = pattern[pos];
    if (c == '\\' && pos + 1 < pattern.size()) {
      const char next = pattern[++pos];
      if (next == 's') out += in_class ? space_items : "[" + space_items + "]";
      else if (next == 'S' && !in_class) out += "[^" + space_items + "]";
      else if (next == 'Q') {  // \Q...\E is literal text: copy it untouched
        const size_t end = pattern.find("\\E", pos);
        const size_t stop = end == std::string::npos ? pattern.size() : end + 2;
        out += pattern.substr(pos - 1, stop - (pos - 1));
        pos = stop - 1;
      } else {
        out += c;
        out += next;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      class_start = pos + 1;
      if (class_start < pattern.size() && pattern[class_start] == '^') ++class_start;
    } else if (in_class && c == '[' && pos + 1 < pattern.size() && pattern[pos + 1] == ':') {
      const size_t end = pattern.find(":]", pos + 2);  // POSIX class such as [:alpha:]
      if (end != std::string::npos) {
        out += pattern.substr(pos, end + 2 - pos);
        pos = end + 1;
        continue;
      }
    } else if (in_class && c == ']' && pos != class_start) {
      in_class = false;
    }
    out += c;
  }
  return out;
}

SplitRegex::SplitRegex(const std::string& pattern, bool literal) : pattern_(pattern) {
  if (pattern.empty()) throw user_error("empty pre-tokenizer split pattern");
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  const std::string compiled = literal ? pattern : oniguruma_compatible(pattern);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(),
                                   options, &error_code, &error_offset, nullptr);
  if (!code) {
    // The offset is only meaningful when the pattern was compiled as written.
    const std::string where = compiled == pattern ? " at offset " + std::to_string(error_offset) : "";
    throw user_error("bad pre-tokenizer regex '", pattern, "': ", pcre2_message(error_code), where);
  }
  // Without JIT (an unsupported CPU) matching still works, only slower.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = std::shared_ptr<void>(code, [](void* p) { pcre2_code_free(static_cast<pcre2_code*>(p)); });
}

bool SplitRegex::find(std::string_view text, size_t offset, size_t& start, size_t& end) const {
  ThreadMatchState& state = thread_match_state();
  const int rc = pcre2_match(static_cast<const pcre2_code*>(code_.get()),
                             reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), offset,
                             PCRE2_NO_UTF_CHECK, state.data, state.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0)
    throw user_error("regex '", pattern_, "' failed on a ", text.size(),
                     "-byte piece of text: ", pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
  start = ovector[0];
  end = ovector[1];
  return true;
}

}  // namespace prime::io::detail
