// Tokenizer loading: malformed or unsupported files end in a UserError that says what is wrong;
// small hand-made tiktoken files check the rank-to-merge derivation.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <unistd.h>

#include "tokenizer/tokenizer.h"
#include "util/error.h"

using Catch::Matchers::Contains;
using nlohmann::json;
using prime::io::Tokenizer;

namespace {

const std::string kTinyPath = std::string(PRIME_FIXTURES_DIR) + "/tokenizer/tiny.tokenizer.json";

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

json tiny_json() { return json::parse(read_all(kTinyPath)); }

// A scratch directory removed at the end of the test. Files are removed one by one:
// std::filesystem::remove_all resolves to libtorch's broken copy (see io/atomic_dir.h).
struct TempDir {
  std::filesystem::path path;
  std::vector<std::string> files;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("prime_tokenizer_test_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    for (const auto& file : files) std::remove(file.c_str());
    ::rmdir(path.c_str());
  }
  std::string write(const std::string& name, const std::string& content) {
    const std::string file = (path / name).string();
    std::ofstream(file, std::ios::binary) << content;
    files.push_back(file);
    return file;
  }
};

std::string base64(const std::string& bytes) {
  const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t pos = 0;
  for (; pos + 3 <= bytes.size(); pos += 3) {
    const uint32_t group = (uint8_t(bytes[pos]) << 16) | (uint8_t(bytes[pos + 1]) << 8) | uint8_t(bytes[pos + 2]);
    for (int shift = 18; shift >= 0; shift -= 6) out += alphabet[(group >> shift) & 63];
  }
  if (bytes.size() - pos == 1) {
    const uint32_t group = uint8_t(bytes[pos]) << 16;
    out += {alphabet[group >> 18], alphabet[(group >> 12) & 63], '=', '='};
  } else if (bytes.size() - pos == 2) {
    const uint32_t group = (uint8_t(bytes[pos]) << 16) | (uint8_t(bytes[pos + 1]) << 8);
    out += {alphabet[group >> 18], alphabet[(group >> 12) & 63], alphabet[(group >> 6) & 63], '='};
  }
  return out;
}

// Ranks: the 256 bytes, then `extra` tokens in order; CRLF line ends like qwen.tiktoken.
std::string rank_file(const std::vector<std::string>& extra) {
  std::string text;
  int rank = 0;
  for (int byte = 0; byte < 256; ++byte) text += base64(std::string(1, char(byte))) + " " + std::to_string(rank++) + "\r\n";
  for (const auto& token : extra) text += base64(token) + " " + std::to_string(rank++) + "\r\n";
  return text;
}

// The message of the UserError that `body` throws, or a note saying it threw none.
template <typename Body>
std::string user_error_of(Body&& body) {
  try {
    body();
  } catch (const prime::UserError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not a UserError: ") + e.what();
  }
  return "no error";
}

#define CHECK_USER_ERROR(expression, message) \
  CHECK_THAT(user_error_of([&] { (void)(expression); }), Contains(message))

void check_json_error(const json& document, const std::string& message) {
  CHECK_USER_ERROR(Tokenizer::from_json_string(document.dump()), message);
}

}  // namespace

TEST_CASE("tokenizer.json problems are user errors with a clear message", "[tokenizer]") {
  REQUIRE_NOTHROW(Tokenizer::from_json_string(tiny_json().dump()));
  {
    json document = tiny_json();
    document["model"].erase("merges");
    check_json_error(document, "no merges");
  }
  {
    json document = tiny_json();
    document["model"]["type"] = "WordPiece";
    check_json_error(document, "model type 'WordPiece' is not supported");
  }
  {
    json document = tiny_json();
    document["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(?i:'s|\\p{L}+";
    check_json_error(document, "bad pre-tokenizer regex");
  }
  {
    json document = tiny_json();
    document["normalizer"] = {{"type", "NFKC"}};
    check_json_error(document, "normalizer 'NFKC' is not supported");
  }
  {
    json document = tiny_json();
    document["model"]["merges"].push_back({"Ġt", "zzzz"});
    check_json_error(document, "token 'zzzz' is not in the vocabulary");
  }
  {
    json document = tiny_json();
    document["model"]["merges"][0] = "one two three";
    check_json_error(document, "is not two tokens");
  }
  {
    json document = tiny_json();
    document["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
    check_json_error(document, "behavior 'Removed' is not supported");
  }
  {
    json document = tiny_json();
    document["pre_tokenizer"] = nullptr;
    check_json_error(document, "no ByteLevel step");
  }
  {
    json document = tiny_json();
    document["decoder"] = {{"type", "WordPiece"}};
    check_json_error(document, "decoder 'WordPiece' is not supported");
  }
  {
    json document = tiny_json();
    document["model"]["dropout"] = 0.1;
    check_json_error(document, "dropout");
  }
  const std::string text = read_all(kTinyPath);
  CHECK_USER_ERROR(Tokenizer::from_json_string(text.substr(0, text.size() / 2), "half.json"),
                   "cannot parse tokenizer half.json");
  CHECK_USER_ERROR(Tokenizer::from_json_string("[1, 2]"), "not an object");
  CHECK_USER_ERROR(Tokenizer::from_json_file("/nonexistent/tokenizer.json"),
                   "cannot read tokenizer /nonexistent/tokenizer.json");
}

TEST_CASE("tokenizer eos comes from tokenizer_config.json when present", "[tokenizer]") {
  TempDir dir;
  dir.write("tokenizer.json", read_all(kTinyPath));
  CHECK(Tokenizer::from_file(dir.path.string()).eos_id() == 1004);  // <|endoftext|> by name
  dir.write("tokenizer_config.json", R"({"eos_token": {"content": "</s>", "special": true}})");
  CHECK(Tokenizer::from_file(dir.path.string()).eos_id() == 1);
  dir.write("tokenizer_config.json", R"({"eos_token": "<s>"})");
  CHECK(Tokenizer::from_json_file((dir.path / "tokenizer.json").string()).eos_id() == 0);
}

TEST_CASE("tiktoken ranks become BPE merges", "[tokenizer]") {
  TempDir dir;
  // "abc" is reachable only as ab + c; "bcd" has no two-part split reachable by lower ranks
  // (b+c is not a token), so tiktoken-style BPE never produces it from its bytes.
  const std::string path = dir.write("small.tiktoken", rank_file({"ab", "abc", "bcd", " a"}));
  const Tokenizer tokenizer = Tokenizer::from_tiktoken(path, prime::io::kQwen2SplitRegex, {{"<|eot|>", 300}}, true);
  CHECK(tokenizer.vocab_size() == 301);
  CHECK(tokenizer.encode("abc") == std::vector<int32_t>{257});
  CHECK(tokenizer.encode("abcd") == std::vector<int32_t>{257, 'd'});
  CHECK(tokenizer.encode("bcd") == std::vector<int32_t>{'b', 'c', 'd'});
  CHECK(tokenizer.encode("x<|eot|> ab") == std::vector<int32_t>{'x', 300, ' ', 256});
  CHECK(tokenizer.eos_id() == std::nullopt);
  // ignore_merges (tiktoken's whole-word lookup) does produce "bcd".
  const Tokenizer whole = Tokenizer::from_tiktoken(path, prime::io::kQwen2SplitRegex, {}, true, true);
  CHECK(whole.encode("bcd") == std::vector<int32_t>{258});
  CHECK(whole.decode(whole.encode("a bcd abc")) == "a bcd abc");
}

TEST_CASE("bad tiktoken files are user errors naming the line", "[tokenizer]") {
  TempDir dir;
  const std::string good = rank_file({"ab"});
  auto load = [&](const std::string& content) {
    return Tokenizer::from_tiktoken(dir.write("bad.tiktoken", content), prime::io::kQwen2SplitRegex, {}, true);
  };
  CHECK_NOTHROW(load(good + "\r\n"));
  CHECK_USER_ERROR(load(good + "YWJj\r\n"), "bad.tiktoken:258: no space");
  CHECK_USER_ERROR(load(good + "!!!! 300\n"), ":258: invalid base64");
  CHECK_USER_ERROR(load(good + "YWJj seven\n"), ":258: invalid rank");
  CHECK_USER_ERROR(load(good + "YWJj 3\n"), "rank given twice");
  CHECK_USER_ERROR(load(good + "YWI= 999\n"), "token given twice");
  CHECK_USER_ERROR(load(""), "no ranks");
  const std::string ok = dir.write("ok.tiktoken", good);
  CHECK_USER_ERROR(Tokenizer::from_tiktoken(ok, "[unclosed", {}, false), "bad pre-tokenizer regex");
  CHECK_USER_ERROR(Tokenizer::from_tiktoken(ok, "", {{"<|x|>", 5}}, false), "already rank of a token");
  CHECK_USER_ERROR(Tokenizer::from_tiktoken("/nonexistent.tiktoken", "", {}, false),
                   "cannot read tiktoken rank file");
}
