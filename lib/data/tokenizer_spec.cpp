#include "data/tokenizer_spec.h"

#include <cstdlib>

#include "util/error.h"

namespace prime::data {

std::string shared_data_dir() {
  if (const char* dir = std::getenv("PRIME_SHARED_DIR"); dir && *dir) return dir;
  return std::string(PRIME_SOURCE_DIR) + "/../shared";
}

io::Tokenizer load_tokenizer(const TokenizerSpec& spec) {
  if (spec.empty())
    throw user_error("no tokenizer given (--tokenizer FILE, --tiktoken FILE --regex R, or --tokenizer-preset qwen|gpt2)");
  if (!spec.json.empty() && (!spec.tiktoken.empty() || !spec.preset.empty()))
    throw user_error("give one tokenizer: --tokenizer, --tiktoken with --regex, or --tokenizer-preset");
  if (!spec.json.empty()) return io::Tokenizer::from_file(spec.json);
  if (spec.preset == "qwen") {
    const std::string ranks =
        spec.tiktoken.empty() ? shared_data_dir() + "/data/tokenizers/qwen.tiktoken" : spec.tiktoken;
    return io::Tokenizer::from_tiktoken(ranks, io::kQwen2SplitRegex, io::qwen2_special_tokens(), /*nfc=*/true);
  }
  if (spec.preset == "gpt2") {
    if (!spec.tiktoken.empty()) throw user_error("--tokenizer-preset gpt2 takes no --tiktoken");
    return io::Tokenizer::from_json_file(shared_data_dir() + "/data/tokenizers/gpt2-bytelevel-bpe.tokenizer.json");
  }
  if (!spec.preset.empty()) throw user_error("unknown --tokenizer-preset '", spec.preset, "' (qwen, gpt2)");
  if (spec.regex.empty()) throw user_error("--tiktoken needs --regex (the split regex), or --tokenizer-preset qwen");
  return io::Tokenizer::from_tiktoken(spec.tiktoken, spec.regex, {}, spec.nfc);
}

}  // namespace prime::data
