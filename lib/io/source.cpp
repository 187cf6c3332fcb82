#include "io/source.h"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

#include "io/architecture.h"
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/synthetic.h"
#include "util/error.h"

namespace prime::io {
namespace {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw user_error("cannot read ", path.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw user_error(path.string(), " is not valid JSON: ", e.what());
  }
}

std::string trim(const std::string& text) {
  const auto begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(" \t\r\n") - begin + 1);
}

Source from_directory(const std::string& spec, const std::filesystem::path& dir) {
  Source source;
  source.spec = spec;
  source.kind = "directory";
  source.dir = dir;
  const auto config_path = dir / "config.json";
  if (!std::filesystem::exists(config_path)) throw user_error(dir.string(), " has no config.json");
  source.config = ModelConfig::from_json(read_json_file(config_path), dir.string());
  return source;
}

// models--Org--Name/snapshots/<refs/main or the only snapshot>.
std::filesystem::path find_in_hf_cache(const std::string& hf_id, std::string* revision) {
  std::string folder = "models--" + hf_id;
  for (size_t pos = folder.find('/'); pos != std::string::npos; pos = folder.find('/')) folder.replace(pos, 1, "--");
  const auto repo = hf_hub_cache() / folder;
  if (!std::filesystem::is_directory(repo / "snapshots")) return {};
  std::ifstream ref(repo / "refs" / "main");
  std::string rev;
  if (ref && std::getline(ref, rev)) {
    rev = trim(rev);
    if (std::filesystem::is_directory(repo / "snapshots" / rev)) {
      *revision = rev;
      return repo / "snapshots" / rev;
    }
  }
  for (const auto& entry : std::filesystem::directory_iterator(repo / "snapshots"))
    if (entry.is_directory() && std::filesystem::exists(entry.path() / "config.json")) {
      *revision = entry.path().filename().string();
      return entry.path();
    }
  return {};
}

// "Org/Name" as the hub spells ids: two non-empty parts of letters, digits, '-', '_', '.'.
bool looks_like_hf_id(const std::string& spec) {
  const auto slash = spec.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == spec.size() || spec.find('/', slash + 1) != std::string::npos)
    return false;
  if (spec[0] == '.' || spec[slash + 1] == '.') return false;  // ./dir, ../dir: paths, not ids
  for (char c : spec)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/')) return false;
  return true;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// Tensor names of attention layer `layer` start with this prefix (model.layers.N.).
bool in_layer(const std::string& name, int64_t* layer) {
  static const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return false;
  size_t position = prefix.size();
  int64_t value = 0;
  while (position < name.size() && std::isdigit(static_cast<unsigned char>(name[position])))
    value = value * 10 + (name[position++] - '0');
  *layer = value;
  return true;
}

Source from_synthetic(const std::string& spec) {
  std::string rest = spec.substr(std::string("synthetic:").size());
  std::string alias = rest, overrides;
  if (auto at_sign = rest.find('@'); at_sign != std::string::npos) {
    alias = rest.substr(0, at_sign);
    overrides = rest.substr(at_sign + 1);
  }
  const auto& models = known_models();
  auto found = models.find(alias);
  if (found == models.end()) throw user_error("unknown model alias '", alias, "' in ", spec);
  Source source;
  source.spec = spec;
  source.kind = "synthetic";
  source.alias = alias;
  source.hf_id = found->second.hf_id;
  nlohmann::json config = found->second.config;
  source.seed = apply_synthetic_overrides(config, overrides, spec);
  source.config = ModelConfig::from_json(config, spec);
  return source;
}

}  // namespace

std::filesystem::path hf_hub_cache() {
  if (const char* cache = std::getenv("HF_HUB_CACHE"); cache && *cache) return cache;
  if (const char* home = std::getenv("HF_HOME"); home && *home) return std::filesystem::path(home) / "hub";
  const char* user_home = std::getenv("HOME");
  return std::filesystem::path(user_home ? user_home : "/") / ".cache" / "huggingface" / "hub";
}

const std::map<std::string, KnownModel>& known_models() {
  static std::once_flag once;
  static std::map<std::string, KnownModel> models;
  std::call_once(once, [] {
    const auto dir = templates_dir() / "models";
    if (!std::filesystem::is_directory(dir)) return;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.path().extension() != ".json") continue;
      nlohmann::json data = read_json_file(entry.path());
      KnownModel model{data.at("alias"), data.at("hf_id"), data.value("family", ""), data.at("config")};
      models[model.alias] = model;
    }
  });
  return models;
}

Source resolve_source(const std::string& spec) {
  if (spec.empty()) throw user_error("empty model source");
  if (spec.rfind("synthetic:", 0) == 0) return from_synthetic(spec);
  std::error_code ec;
  if (std::filesystem::is_directory(spec, ec)) return from_directory(spec, spec);
  const auto& models = known_models();
  auto found = models.find(spec);
  if (found == models.end() && looks_like_hf_id(spec)) {
    std::string revision;
    const auto snapshot = find_in_hf_cache(spec, &revision);
    if (snapshot.empty())
      throw user_error("source '", spec, "' is neither a directory nor a model in the Hugging Face cache at ",
                       hf_hub_cache().string(), ". Download it with:\n  hf download ", spec);
    Source source = from_directory(spec, snapshot);
    source.kind = "hf-cache";
    source.hf_id = spec;
    source.revision = revision;
    return source;
  }
  if (found == models.end()) {
    if (std::filesystem::exists(spec, ec))
      throw user_error(spec, " is not a directory: a source is the directory of a model (config.json beside its ",
                       "*.safetensors), a Hugging Face id or an alias, not one of its files");
    std::string aliases;
    for (const auto& [alias, model] : models) aliases += (aliases.empty() ? "" : ", ") + alias;
    throw user_error("source '", spec, "' is neither a directory nor a known model alias (known: ", aliases,
                     "; or synthetic:<alias>)");
  }
  std::string revision;
  const auto snapshot = find_in_hf_cache(found->second.hf_id, &revision);
  if (snapshot.empty())
    throw user_error("model ", spec, " (", found->second.hf_id, ") is not in the Hugging Face cache at ",
                     hf_hub_cache().string(), ". Download it with:\n  hf download ", found->second.hf_id,
                     "\n(or: huggingface-cli download ", found->second.hf_id,
                     "), or pass a checkpoint directory, or use synthetic:", spec, " for random weights");
  Source source = from_directory(spec, snapshot);
  source.kind = "alias";
  source.alias = spec;
  source.hf_id = found->second.hf_id;
  source.revision = revision;
  return source;
}

std::vector<TensorSpec> transformer_tensor_specs(const ModelConfig& config) {
  const ArchitectureTemplate& arch = find_architecture(config.model_type, config.architecture, config.model_type);
  const int64_t d = config.hidden_size, q_dim = config.num_attention_heads * config.head_dim,
                kv_dim = config.num_key_value_heads * config.head_dim, D = config.head_dim;
  std::vector<TensorSpec> specs;
  specs.push_back({arch.name("embed_tokens"), {config.vocab_size, d}});
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    specs.push_back({arch.name("input_layernorm", i), {d}});
    const std::string attn = arch.name("attention_prefix", i);
    specs.push_back({attn + "q_proj.weight", {q_dim, d}});
    specs.push_back({attn + "k_proj.weight", {kv_dim, d}});
    specs.push_back({attn + "v_proj.weight", {kv_dim, d}});
    specs.push_back({attn + "o_proj.weight", {d, q_dim}});
    if (config.attention_bias) {
      specs.push_back({attn + "q_proj.bias", {q_dim}});
      specs.push_back({attn + "k_proj.bias", {kv_dim}});
      specs.push_back({attn + "v_proj.bias", {kv_dim}});
      if (config.family != "qwen2") specs.push_back({attn + "o_proj.bias", {d}});
    }
    if (config.qk_norm) {
      specs.push_back({attn + "q_norm.weight", {D}});
      specs.push_back({attn + "k_norm.weight", {D}});
    }
    specs.push_back({arch.name("post_attention_layernorm", i), {d}});
    if (config.layer_is_moe(i)) {
      const int64_t inter = config.moe.moe_intermediate_size;
      specs.push_back({arch.name("moe_router", i), {config.moe.num_experts, d}});
      for (int64_t e = 0; e < config.moe.num_experts; ++e) {
        const std::string expert = arch.name("moe_expert_prefix", i, e);
        specs.push_back({expert + "gate_proj.weight", {inter, d}});
        specs.push_back({expert + "up_proj.weight", {inter, d}});
        specs.push_back({expert + "down_proj.weight", {d, inter}});
      }
    } else {
      const std::string mlp = arch.name("mlp_prefix", i);
      specs.push_back({mlp + "gate_proj.weight", {config.intermediate_size, d}});
      specs.push_back({mlp + "up_proj.weight", {config.intermediate_size, d}});
      specs.push_back({mlp + "down_proj.weight", {d, config.intermediate_size}});
    }
  }
  specs.push_back({arch.name("final_norm"), {d}});
  if (!config.tie_word_embeddings) specs.push_back({arch.name("lm_head"), {config.vocab_size, d}});
  return specs;
}

at::ScalarType synthetic_dtype(const ModelConfig& config) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    auto found = config.raw.find(key);
    if (found == config.raw.end() || !found->is_string()) continue;
    const std::string name = found->get<std::string>();
    if (name == "bfloat16") return at::kBFloat16;
    if (name == "float16") return at::kHalf;
    if (name == "float32") return at::kFloat;
  }
  return at::kFloat;
}

void check_weights_match_config(const ModelConfig& config, const Checkpoint& checkpoint) {
  const bool hybrid = config.is_hybrid();
  for (const auto& spec : transformer_tensor_specs(config)) {
    int64_t layer = -1;
    const bool layered = in_layer(spec.name, &layer);
    if (hybrid && layered && layer < static_cast<int64_t>(config.layer_pattern.size()) &&
        config.layer_pattern[layer] != "*")
      continue;  // an SSM layer: its mixer's loader checks it
    if (!checkpoint.contains(spec.name)) {
      if (hybrid) continue;
      throw user_error(checkpoint.path().string(), ": missing tensor ", spec.name, " (shape ", shape_text(spec.shape),
                       " by config.json)");
    }
    const auto& shape = checkpoint.info(spec.name).shape;
    if (shape != spec.shape)
      throw user_error(checkpoint.path().string(), ": tensor ", spec.name, " has shape ", shape_text(shape),
                       " but config.json implies ", shape_text(spec.shape));
  }
}

WeightsSummary summarize_weights(const Source& source) {
  WeightsSummary summary;
  if (source.kind == "synthetic") {
    summary.dtype = synthetic_dtype(source.config);
    for (const auto& spec : transformer_tensor_specs(source.config)) {
      uint64_t elements = 1;
      for (int64_t extent : spec.shape) elements *= static_cast<uint64_t>(extent);
      summary.parameters += elements;
    }
    summary.bytes = summary.parameters * at::elementSize(summary.dtype);
    return summary;
  }
  const Checkpoint checkpoint = Checkpoint::open(source.dir);
  std::map<DType, uint64_t> bytes_by_dtype;
  for (const auto& name : checkpoint.names()) {
    const TensorInfo& info = checkpoint.info(name);
    uint64_t elements = 1;
    for (int64_t extent : info.shape) elements *= static_cast<uint64_t>(extent);
    summary.parameters += elements;
    summary.bytes += info.nbytes();
    bytes_by_dtype[info.dtype] += info.nbytes();
  }
  uint64_t most = 0;
  for (const auto& [dtype, bytes] : bytes_by_dtype) {
    const bool floating = dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32 || dtype == DType::F64;
    if (floating && bytes > most) most = bytes, summary.dtype = to_scalar_type(dtype);
  }
  return summary;
}

std::map<std::string, at::Tensor> load_source_weights(const Source& source) {
  if (source.kind == "synthetic") {
    return synthetic_weights(transformer_tensor_specs(source.config), source.seed, synthetic_dtype(source.config));
  }
  Checkpoint checkpoint = Checkpoint::open(source.dir);
  check_weights_match_config(source.config, checkpoint);
  std::map<std::string, at::Tensor> weights;
  for (const auto& name : checkpoint.names()) weights[name] = checkpoint.tensor(name);
  return weights;
}

}  // namespace prime::io
