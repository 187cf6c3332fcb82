// Parity with Hugging Face `tokenizers`: ids, decode and vocab size as written by
// tests/fixtures/tokenizer/make_fixtures.py, for four byte-level BPE tokenizers.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>
#include <fstream>
#include <map>
#include <thread>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_bench.h"
#include "tokenizer/tokenizer_regex.h"

using prime::io::Tokenizer;

namespace {

const std::string kShared = std::string(PRIME_SHARED_DIR) + "/data/tokenizers/";
const std::string kFixtures = std::string(PRIME_FIXTURES_DIR) + "/tokenizer/";

const std::vector<std::pair<std::string, int32_t>>& llama3_specials() {
  static const std::vector<std::pair<std::string, int32_t>> specials = {
      {"<|begin_of_text|>", 151643}, {"<|end_of_text|>", 151644}, {"<|start_header_id|>", 151645},
      {"<|end_header_id|>", 151646}, {"<|eot_id|>", 151647}};
  return specials;
}

// Loading the 151k-rank file takes a moment; each tokenizer is built once per test run.
const Tokenizer& tokenizer_named(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto found = cache.find(name);
  if (found != cache.end()) return found->second;
  if (name == "gpt2")
    return cache.emplace(name, Tokenizer::from_json_file(kShared + "gpt2-bytelevel-bpe.tokenizer.json")).first->second;
  if (name == "qwen")
    return cache.emplace(name, Tokenizer::from_tiktoken(kShared + "qwen.tiktoken", prime::io::kQwen2SplitRegex,
                                                        prime::io::qwen2_special_tokens(), true)).first->second;
  if (name == "llama3")
    return cache.emplace(name, Tokenizer::from_tiktoken(kShared + "qwen.tiktoken", prime::io::kLlama3SplitRegex,
                                                        llama3_specials(), false, true)).first->second;
  return cache.emplace(name, Tokenizer::from_json_file(kFixtures + "tiny.tokenizer.json")).first->second;
}

nlohmann::json expected_for(const std::string& name) {
  std::ifstream in(kFixtures + "expected_" + name + ".json");
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

std::vector<int32_t> ids_of(const nlohmann::json& node) { return node.get<std::vector<int32_t>>(); }

const std::string& wikitext() {
  static const std::string text =
      prime::io::read_text_maybe_xz(std::string(PRIME_SHARED_DIR) + "/data/corpus/wikitext2.valid.txt.xz");
  return text;
}

std::vector<std::string_view> lines_with_ends(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    end = end == std::string_view::npos ? text.size() : end + 1;
    lines.push_back(text.substr(start, end - start));
    start = end;
  }
  return lines;
}

// Same hash as make_fixtures.py: FNV-1a over ids as little-endian uint32, 0xFFFFFFFF per line.
uint64_t fnv1a64(const std::vector<std::vector<int32_t>>& per_line) {
  uint64_t hash = 0xCBF29CE484222325ULL;
  auto add = [&](uint32_t word) {
    for (int shift = 0; shift < 32; shift += 8) hash = (hash ^ ((word >> shift) & 0xFF)) * 0x100000001B3ULL;
  };
  for (const auto& ids : per_line) {
    for (int32_t id : ids) add(static_cast<uint32_t>(id));
    add(0xFFFFFFFFu);
  }
  return hash;
}

std::string hex(uint64_t value) {
  char buffer[17];
  std::snprintf(buffer, sizeof buffer, "%016llx", static_cast<unsigned long long>(value));
  return buffer;
}

}  // namespace

TEST_CASE("tokenizer matches HF tokenizers on varied text", "[tokenizer]") {
  const std::string name = GENERATE(as<std::string>{}, "gpt2", "qwen", "llama3", "tiny");
  const Tokenizer& tokenizer = tokenizer_named(name);
  const nlohmann::json expected = expected_for(name);
  CHECK(tokenizer.vocab_size() == expected["vocab_size"].get<int64_t>());
  size_t ids_matched = 0;
  for (const auto& test : expected["cases"]) {
    const std::string text = test["text"].get<std::string>();
    INFO(name << " text: " << text);
    const auto ids = tokenizer.encode(text);
    CHECK(ids == ids_of(test["ids"]));
    CHECK(tokenizer.encode(text, /*parse_special=*/false) == ids_of(test["ids_plain"]));
    CHECK(tokenizer.decode(ids) == test["decoded"].get<std::string>());
    CHECK(tokenizer.decode(ids, /*skip_special=*/true) == test["decoded_skip"].get<std::string>());
    // The tiny tokenizer adds a space before every piece, so it is not meant to round-trip.
    if (name != "tiny" && test["nfc_stable"].get<bool>()) CHECK(tokenizer.decode(ids) == text);
    if (ids == ids_of(test["ids"])) ids_matched += ids.size();
  }
  CHECK(ids_matched > 900);
}

TEST_CASE("tokenizer matches HF tokenizers on WikiText-2", "[tokenizer]") {
  const std::string name = GENERATE(as<std::string>{}, "gpt2", "qwen", "llama3", "tiny");
  const Tokenizer& tokenizer = tokenizer_named(name);
  const nlohmann::json expected = expected_for(name);
  INFO(name);

  const auto& slice = expected["wikitext_slice"];
  const std::string slice_text = wikitext().substr(0, slice["bytes"].get<size_t>());
  CHECK(tokenizer.encode(slice_text) == ids_of(slice["ids"]));

  const auto lines = lines_with_ends(wikitext());
  std::vector<std::vector<int32_t>> per_line;
  size_t total = 0;
  for (auto line : lines) {
    per_line.push_back(tokenizer.encode(line));
    total += per_line.back().size();
    if (name != "tiny") REQUIRE(tokenizer.decode(per_line.back()) == line);
  }
  const auto& summary = expected["wikitext_lines"];
  CHECK(lines.size() == summary["lines"].get<size_t>());
  CHECK(total == summary["ids"].get<size_t>());
  CHECK(hex(fnv1a64(per_line)) == summary["fnv1a64"].get<std::string>());
}

TEST_CASE("tokenizer encodes from many threads at once", "[tokenizer]") {
  const Tokenizer& tokenizer = tokenizer_named("qwen");
  const auto lines = lines_with_ends(wikitext());
  std::vector<std::vector<int32_t>> serial;
  for (auto line : lines) serial.push_back(tokenizer.encode(line));
  // A fresh tokenizer so the threads race on an empty word cache.
  const Tokenizer fresh = Tokenizer::from_json_file(kShared + "gpt2-bytelevel-bpe.tokenizer.json");
  std::vector<std::vector<int32_t>> gpt2_serial;
  for (auto line : lines) gpt2_serial.push_back(tokenizer_named("gpt2").encode(line));
  std::vector<std::vector<int32_t>> parallel(lines.size()), gpt2_parallel(lines.size());
  std::vector<std::thread> threads;
  for (int thread = 0; thread < 4; ++thread) {
    threads.emplace_back([&, thread] {
      for (size_t index = thread; index < lines.size(); index += 4) {
        parallel[index] = tokenizer.encode(lines[index]);
        gpt2_parallel[index] = fresh.encode(lines[index]);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(parallel == serial);
  CHECK(gpt2_parallel == gpt2_serial);
}

TEST_CASE("tokenizer lookups, eos and special tokens", "[tokenizer]") {
  const Tokenizer& gpt2 = tokenizer_named("gpt2");
  CHECK(gpt2.token_to_id("Ġthe") == 262);
  CHECK(gpt2.id_to_token(262) == "Ġthe");
  CHECK(gpt2.eos_id() == 50256);
  CHECK(gpt2.is_special(50256));
  CHECK_FALSE(gpt2.is_special(50257));  // a run of spaces: added, not special
  CHECK_FALSE(gpt2.id_to_token(-1).has_value());
  CHECK_FALSE(gpt2.id_to_token(50295).has_value());
  CHECK_FALSE(gpt2.token_to_id("no such token").has_value());
  CHECK(gpt2.decode({-5, 262, 999999}) == " the");  // ids naming no token are skipped, as in HF

  const Tokenizer& qwen = tokenizer_named("qwen");
  CHECK(qwen.eos_id() == 151643);
  CHECK(qwen.token_to_id("<|im_end|>") == 151645);
  CHECK(qwen.encode("<|im_start|>") == std::vector<int32_t>{151644});
  CHECK(qwen.encode("<|im_start|>", false).size() > 1);
  CHECK(tokenizer_named("llama3").eos_id() == 151644);  // <|end_of_text|>
  CHECK(Tokenizer::from_file(kShared + "qwen.tiktoken").encode("Hello world") == qwen.encode("Hello world"));
  // Half of a two-byte character decodes to U+FFFD, as HF's from_utf8_lossy does.
  const auto e_acute = qwen.encode("\xC3\xA9");  // one token; its bytes alone
  const auto bytes = qwen.encode("\xC3");        // invalid input: encoded as U+FFFD
  CHECK(bytes == qwen.encode("\xEF\xBF\xBD"));
  CHECK(qwen.decode({*qwen.token_to_id("Ã")}) == "\xEF\xBF\xBD");
  CHECK(qwen.decode(e_acute) == "\xC3\xA9");
}

TEST_CASE("tokenizer survives long runs of one character class", "[tokenizer]") {
  for (const char* name : {"gpt2", "qwen"}) {
    const Tokenizer& tokenizer = tokenizer_named(name);
    for (const std::string text : {std::string(1 << 20, ' '), std::string(200000, '7'),
                                   std::string(100000, '\n') + "x", "x" + std::string(300000, 'a')}) {
      INFO(name << " run of " << text.size());
      CHECK(tokenizer.decode(tokenizer.encode(text)) == text);
    }
  }
}

TEST_CASE("tokenizer regexes use Oniguruma's whitespace class", "[tokenizer]") {
  using prime::io::detail::oniguruma_compatible;
  CHECK(oniguruma_compatible(R"(\s+(?!\S))") == R"([\t-\r\x{85}\p{Z}]+(?![^\t-\r\x{85}\p{Z}]))");
  CHECK(oniguruma_compatible(R"( ?[^\s\p{L}\p{N}]+)") == R"( ?[^\t-\r\x{85}\p{Z}\p{L}\p{N}]+)");
  // Escaped backslashes, quoted text, a leading ']' and POSIX classes stay as they are.
  CHECK(oniguruma_compatible(R"([]\s][[:alpha:]\s]\\s\Q\s\E)") ==
        R"([]\t-\r\x{85}\p{Z}][[:alpha:]\t-\r\x{85}\p{Z}]\\s\Q\s\E)");
  const prime::io::detail::SplitRegex gpt2(prime::io::kGpt2SplitRegex, false);
  std::vector<std::string> pieces;
  gpt2.for_each_piece("a \u180e\u180eb", [&](std::string_view piece) { pieces.emplace_back(piece); });
  CHECK(pieces == std::vector<std::string>{"a", " \u180e\u180e", "b"});
}
