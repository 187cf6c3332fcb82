// Builds a TokenizerSpec from a HF tokenizer.json.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/tokenizer_text.h"
#include "util/error.h"

namespace prime::io {

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw user_error("cannot read ", what, " ", path, ": no such file or not readable");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw user_error("error while reading ", what, " ", path);
  return buffer.str();
}

namespace {

using nlohmann::json;

std::string type_of(const json& node) {
  if (!node.is_object()) return "";
  auto found = node.find("type");
  return found != node.end() && found->is_string() ? found->get<std::string>() : "";
}

bool flag(const json& node, const char* key, bool fallback = false) {
  auto found = node.find(key);
  if (found == node.end() || found->is_null()) return fallback;
  if (!found->is_boolean()) throw user_error("field '", key, "' must be true or false");
  return found->get<bool>();
}

void parse_normalizer(const json& node, TokenizerSpec& spec) {
  if (node.is_null()) return;
  const std::string type = type_of(node);
  if (type == "NFC") {
    spec.nfc = true;
  } else if (type == "Sequence" && node.contains("normalizers") && node["normalizers"].is_array()) {
    for (const json& step : node["normalizers"]) parse_normalizer(step, spec);
  } else {
    throw user_error("normalizer '", type.empty() ? node.dump() : type,
                     "' is not supported (only NFC, a Sequence of NFC, or none)");
  }
}

void parse_pre_tokenizer_step(const json& node, TokenizerSpec& spec, bool& byte_level) {
  const std::string type = type_of(node);
  if (byte_level) throw user_error("pre_tokenizer: ByteLevel must be the last step");
  if (type == "ByteLevel") {
    byte_level = true;
    spec.add_prefix_space = flag(node, "add_prefix_space");
    spec.byte_level_regex = flag(node, "use_regex", true);
  } else if (type == "Split") {
    const json& pattern = node.value("pattern", json());
    const std::string behavior = node.value("behavior", std::string());
    if (behavior != "Isolated")
      throw user_error("pre_tokenizer Split behavior '", behavior, "' is not supported (only Isolated)");
    if (flag(node, "invert")) throw user_error("pre_tokenizer Split with invert=true is not supported");
    if (pattern.contains("Regex") && pattern["Regex"].is_string())
      spec.splits.emplace_back(pattern["Regex"].get<std::string>(), false);
    else if (pattern.contains("String") && pattern["String"].is_string())
      spec.splits.emplace_back(pattern["String"].get<std::string>(), true);
    else
      throw user_error("pre_tokenizer Split needs a pattern {\"Regex\": ...} or {\"String\": ...}");
  } else {
    throw user_error("pre_tokenizer '", type.empty() ? node.dump() : type,
                     "' is not supported (only ByteLevel, or a Sequence of Split steps and ByteLevel)");
  }
}

void parse_pre_tokenizer(const json& node, TokenizerSpec& spec) {
  bool byte_level = false;
  if (type_of(node) == "Sequence" && node.contains("pretokenizers") && node["pretokenizers"].is_array()) {
    for (const json& step : node["pretokenizers"]) parse_pre_tokenizer_step(step, spec, byte_level);
  } else if (!node.is_null()) {
    parse_pre_tokenizer_step(node, spec, byte_level);
  }
  if (!byte_level)
    throw user_error("pre_tokenizer has no ByteLevel step: not a byte-level BPE tokenizer");
}

void check_decoder(const json& node) {
  if (node.is_null() || type_of(node) == "ByteLevel") return;
  if (type_of(node) == "Sequence" && node.contains("decoders") && node["decoders"].is_array()) {
    for (const json& step : node["decoders"]) check_decoder(step);
    return;
  }
  throw user_error("decoder '", type_of(node).empty() ? node.dump() : type_of(node),
                   "' is not supported (only ByteLevel)");
}

void parse_model(const json& model, TokenizerSpec& spec) {
  if (!model.is_object()) throw user_error("no \"model\" object");
  std::string type = type_of(model);
  if (type.empty() && model.contains("merges")) type = "BPE";  // files from before "type"
  if (type != "BPE")
    throw user_error("model type '", type, "' is not supported (only BPE)");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0)
    throw user_error("BPE dropout is not supported (encoding would be random)");
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(affix) && !model[affix].is_null() && !model[affix].get<std::string>().empty())
      throw user_error("BPE ", affix, " is not supported (not a byte-level BPE)");
  if (flag(model, "byte_fallback")) throw user_error("BPE byte_fallback is not supported (not a byte-level BPE)");

  const json& vocab = model.value("vocab", json());
  if (!vocab.is_object() || vocab.empty()) throw user_error("BPE model has no vocab");
  std::unordered_map<std::string, int32_t> ids;
  ids.reserve(vocab.size());
  for (const auto& [token, id_node] : vocab.items()) {
    if (!id_node.is_number_integer() || id_node.get<int64_t>() < 0 ||
        id_node.get<int64_t>() >= kMaxTokenId)
      throw user_error("vocab entry '", token, "' has an invalid id ", id_node.dump());
    const int32_t id = id_node.get<int32_t>();
    if (static_cast<size_t>(id) >= spec.vocab.size()) spec.vocab.resize(id + 1);
    spec.vocab[id] = token;
    ids.emplace(token, id);
  }

  if (!model.contains("merges") || !model["merges"].is_array())
    throw user_error("BPE model has no merges");
  auto id_of = [&](const std::string& token, size_t line) {
    auto found = ids.find(token);
    if (found == ids.end())
      throw user_error("merge ", line, ": token '", token, "' is not in the vocabulary");
    return found->second;
  };
  size_t line = 0;
  for (const json& merge : model["merges"]) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string text = merge.get<std::string>();
      if (text.rfind("#version", 0) == 0) continue;
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos)
        throw user_error("merge ", line + 1, " '", text, "' is not two tokens separated by one space");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      throw user_error("merge ", line + 1, " is neither \"a b\" nor [\"a\", \"b\"]: ", merge.dump());
    }
    ++line;
    spec.merges.push_back({id_of(left, line), id_of(right, line), id_of(left + right, line)});
  }

  auto unk = model.find("unk_token");
  if (unk != model.end() && !unk->is_null()) {
    const std::string name = unk->get<std::string>();
    auto found = ids.find(name);
    if (found == ids.end()) throw user_error("unk_token '", name, "' is not in the vocabulary");
    spec.bpe_options.unk_id = found->second;
  }
  spec.bpe_options.fuse_unk = flag(model, "fuse_unk");
  spec.bpe_options.ignore_merges = flag(model, "ignore_merges");
}

void parse_added_tokens(const json& list, TokenizerSpec& spec) {
  if (list.is_null()) return;
  if (!list.is_array()) throw user_error("\"added_tokens\" must be a list");
  for (const json& entry : list) {
    if (!entry.is_object() || !entry.contains("content") || !entry.contains("id"))
      throw user_error("added token without content or id: ", entry.dump());
    detail::AddedToken token;
    token.content = entry["content"].get<std::string>();
    token.id = entry["id"].get<int32_t>();
    token.special = flag(entry, "special");
    token.normalized = flag(entry, "normalized", !token.special);
    token.lstrip = flag(entry, "lstrip");
    token.rstrip = flag(entry, "rstrip");
    token.single_word = flag(entry, "single_word");
    spec.added.push_back(std::move(token));
  }
}

// "eos_token" of a tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> configured_eos(const std::filesystem::path& config_path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(config_path, error)) return std::nullopt;
  try {
    const json config = json::parse(read_text_file(config_path.string(), "tokenizer config"));
    const json& eos = config.value("eos_token", json());
    if (eos.is_string()) return eos.get<std::string>();
    if (eos.is_object() && eos.contains("content")) return eos["content"].get<std::string>();
  } catch (const json::exception& e) {
    throw user_error("cannot parse ", config_path.string(), ": ", e.what());
  }
  return std::nullopt;
}

TokenizerSpec spec_from_json(const std::string& json_text, const std::string& origin) {
  TokenizerSpec spec;
  try {
    const json root = json::parse(json_text);
    if (!root.is_object()) throw user_error("top level is not an object");
    parse_model(root.value("model", json()), spec);
    parse_normalizer(root.value("normalizer", json()), spec);
    parse_pre_tokenizer(root.value("pre_tokenizer", json()), spec);
    check_decoder(root.value("decoder", json()));
    parse_added_tokens(root.value("added_tokens", json()), spec);
  } catch (const json::exception& e) {
    throw user_error("cannot parse tokenizer ", origin, ": ", e.what());
  } catch (const UserError& e) {
    throw user_error("tokenizer ", origin, ": ", e.what());
  }
  return spec;
}

}  // namespace

Tokenizer Tokenizer::from_json_string(const std::string& json_text, const std::string& origin) {
  return Tokenizer(Impl::finish(spec_from_json(json_text, origin), origin));
}

Tokenizer Tokenizer::from_json_file(const std::string& path) {
  TokenizerSpec spec = spec_from_json(read_text_file(path, "tokenizer"), path);
  spec.eos_token = configured_eos(std::filesystem::path(path).parent_path() / "tokenizer_config.json");
  return Tokenizer(Impl::finish(std::move(spec), path));
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error))
    return from_json_file((std::filesystem::path(path) / "tokenizer.json").string());
  const std::string suffix = ".tiktoken";
  if (path.size() > suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0)
    return from_tiktoken(path, kQwen2SplitRegex, qwen2_special_tokens(), /*nfc=*/true);
  return from_json_file(path);
}

}  // namespace prime::io
