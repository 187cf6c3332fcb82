// Which tokenizer a command uses: a tokenizer.json (or a directory holding one), a tiktoken rank
// file with a split regex, or a named preset built from the shared data.
#pragma once

#include <string>

#include "tokenizer/tokenizer.h"

namespace prime::data {

struct TokenizerSpec {
  std::string json;      // --tokenizer: tokenizer.json, its directory, or a *.tiktoken (read as Qwen2)
  std::string tiktoken;  // --tiktoken: rank file (needs --regex, or a preset)
  std::string regex;     // --regex: split regex for --tiktoken
  bool nfc = false;      // --nfc: NFC-normalise before splitting (tiktoken only)
  std::string preset;    // --tokenizer-preset: qwen | gpt2

  bool empty() const { return json.empty() && tiktoken.empty() && preset.empty(); }
};

// Presets: "qwen" = Qwen2/Qwen3 from qwen.tiktoken (--tiktoken or the shared copy), Qwen2 split
// regex, NFC, Qwen2 special tokens; "gpt2" = the shared GPT-2 tokenizer.json. UserError when
// nothing or conflicting sources are given.
io::Tokenizer load_tokenizer(const TokenizerSpec& spec);

// Where the shared data lives: $PRIME_SHARED_DIR, else <source>/../shared.
std::string shared_data_dir();

}  // namespace prime::data
