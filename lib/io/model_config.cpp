#include "io/model_config.h"

#include <algorithm>
#include <set>

#include "io/architecture.h"
#include "util/error.h"

namespace prime::io {
namespace {

using nlohmann::json;

template <typename T>
T get_or(const json& object, const char* key, T fallback) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return fallback;
  return found->get<T>();
}

int64_t require_positive(const json& config, const char* key, const std::string& where) {
  auto found = config.find(key);
  if (found == config.end() || !found->is_number_integer())
    throw user_error(where, ": config.json lacks integer field '", key, "'");
  int64_t value = found->get<int64_t>();
  if (value <= 0) throw user_error(where, ": config.json field '", key, "' must be > 0, got ", value);
  return value;
}

// rope_parameters (transformers >= 5) or rope_theta + rope_scaling (<= 4).
RopeConfig parse_rope(const json& config, const std::string& where) {
  RopeConfig rope;
  json params = json::object();
  if (config.contains("rope_parameters") && config["rope_parameters"].is_object()) {
    params = config["rope_parameters"];
    // Some configs nest per attention type; take full attention's.
    if (params.contains("full_attention") && params["full_attention"].is_object())
      params = params["full_attention"];
  } else if (config.contains("rope_scaling") && config["rope_scaling"].is_object()) {
    params = config["rope_scaling"];
  }
  rope.theta = get_or<double>(params, "rope_theta", get_or<double>(config, "rope_theta", 10000.0));
  std::string type = get_or<std::string>(params, "rope_type", get_or<std::string>(params, "type", "default"));
  static const std::set<std::string> known = {"default", "linear", "llama3", "yarn", "dynamic"};
  if (!known.count(type))
    throw user_error(where, ": unsupported rope type '", type, "' (supported: default, linear, llama3, yarn, dynamic)");
  rope.type = type;
  rope.factor = get_or<double>(params, "factor", 1.0);
  rope.partial_rotary_factor =
      get_or<double>(params, "partial_rotary_factor", get_or<double>(config, "partial_rotary_factor", 1.0));
  // Refused here, where every command reads configs, so no command accepts what another refuses.
  if (rope.partial_rotary_factor != 1.0)
    throw user_error(where, ": partial_rotary_factor ", rope.partial_rotary_factor,
                     " is not supported (RoPE on part of each head); only 1.0 is");
  rope.low_freq_factor = get_or<double>(params, "low_freq_factor", 1.0);
  rope.high_freq_factor = get_or<double>(params, "high_freq_factor", 4.0);
  rope.original_max_position_embeddings = get_or<int64_t>(params, "original_max_position_embeddings", 0);
  if (params.contains("attention_factor") && !params["attention_factor"].is_null())
    rope.attention_factor = params["attention_factor"].get<double>();
  if (params.contains("mscale") && !params["mscale"].is_null()) rope.mscale = params["mscale"].get<double>();
  if (params.contains("mscale_all_dim") && !params["mscale_all_dim"].is_null())
    rope.mscale_all_dim = params["mscale_all_dim"].get<double>();
  rope.beta_fast = get_or<double>(params, "beta_fast", 32.0);
  rope.beta_slow = get_or<double>(params, "beta_slow", 1.0);
  rope.truncate = get_or<bool>(params, "truncate", true);
  if (type != "default" && rope.factor <= 0)
    throw user_error(where, ": rope factor must be > 0 for rope type ", type);
  return rope;
}

// Per-layer window as transformers resolves it: explicit layer_types win; Mistral applies
// sliding_window to every layer; Qwen2/3 only when use_sliding_window, from max_window_layers on.
std::vector<int64_t> resolve_windows(const json& config, const ModelConfig& model, const std::string& where) {
  std::vector<int64_t> windows(model.num_hidden_layers, 0);
  const int64_t window = get_or<int64_t>(config, "sliding_window", 0);
  auto layer_types = config.find("layer_types");
  if (layer_types != config.end() && layer_types->is_array() && !layer_types->empty() &&
      (*layer_types)[0].is_string() &&
      ((*layer_types)[0] == "full_attention" || (*layer_types)[0] == "sliding_attention")) {
    if (static_cast<int64_t>(layer_types->size()) != model.num_hidden_layers)
      throw user_error(where, ": layer_types has ", layer_types->size(), " entries for ",
                       model.num_hidden_layers, " layers");
    for (int64_t i = 0; i < model.num_hidden_layers; ++i) {
      const std::string kind = (*layer_types)[i].get<std::string>();
      if (kind == "sliding_attention") {
        if (window <= 0) throw user_error(where, ": layer ", i, " is sliding_attention but sliding_window is not set");
        windows[i] = window;
      } else if (kind != "full_attention") {
        throw user_error(where, ": unknown layer_types entry '", kind, "' at layer ", i);
      }
    }
    return windows;
  }
  if (window <= 0) return windows;
  if (model.family == "mistral") {
    std::fill(windows.begin(), windows.end(), window);
  } else if (get_or<bool>(config, "use_sliding_window", false)) {
    const int64_t first = get_or<int64_t>(config, "max_window_layers", model.num_hidden_layers);
    for (int64_t i = std::max<int64_t>(first, 0); i < model.num_hidden_layers; ++i) windows[i] = window;
  }
  return windows;
}

}  // namespace

std::vector<std::string> parse_layer_pattern(const std::string& pattern, const std::string& where) {
  static const std::set<std::string> known = {"*", "GKA", "GDN", "M2", "SWA"};
  std::vector<std::string> symbols;
  size_t start = 0;
  while (start <= pattern.size()) {
    size_t end = pattern.find('-', start);
    if (end == std::string::npos) end = pattern.size();
    std::string symbol = pattern.substr(start, end - start);
    if (!known.count(symbol))
      throw user_error(where, ": unknown layer symbol '", symbol, "' at position ", symbols.size(),
                       " of pattern (known: *, GKA, GDN, M2, SWA)");
    symbols.push_back(symbol);
    start = end + 1;
  }
  return symbols;
}

std::string join_layer_pattern(const std::vector<std::string>& symbols) {
  std::string out;
  for (size_t i = 0; i < symbols.size(); ++i) out += (i ? "-" : "") + symbols[i];
  return out;
}

ModelConfig ModelConfig::from_json(const json& config, const std::string& where) {
  if (!config.is_object()) throw user_error(where, ": config.json is not a JSON object");
  ModelConfig model;
  model.raw = config;
  model.model_type = get_or<std::string>(config, "model_type", "");
  if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty())
    model.architecture = config["architectures"][0].get<std::string>();
  const ArchitectureTemplate& arch = find_architecture(model.model_type, model.architecture, where);
  model.family = arch.family;
  model.qk_norm = arch.qk_norm;

  model.hidden_size = require_positive(config, "hidden_size", where);
  model.intermediate_size = require_positive(config, "intermediate_size", where);
  model.num_hidden_layers = require_positive(config, "num_hidden_layers", where);
  model.num_attention_heads = require_positive(config, "num_attention_heads", where);
  model.num_key_value_heads = get_or<int64_t>(config, "num_key_value_heads", model.num_attention_heads);
  model.vocab_size = require_positive(config, "vocab_size", where);
  model.head_dim = get_or<int64_t>(config, "head_dim", model.hidden_size / model.num_attention_heads);
  model.max_position_embeddings = get_or<int64_t>(config, "max_position_embeddings", 2048);
  model.rms_norm_eps = get_or<double>(config, "rms_norm_eps", 1e-6);
  model.tie_word_embeddings = get_or<bool>(config, "tie_word_embeddings", false);
  model.attention_bias = get_or<bool>(config, "attention_bias", arch.attention_bias_default);
  model.hidden_act = get_or<std::string>(config, "hidden_act", "silu");
  if (model.hidden_act != "silu")
    throw user_error(where, ": hidden_act '", model.hidden_act, "' is not supported (only silu)");
  if (model.num_key_value_heads <= 0 || model.num_attention_heads % model.num_key_value_heads != 0)
    throw user_error(where, ": num_attention_heads (", model.num_attention_heads,
                     ") must be a multiple of num_key_value_heads (", model.num_key_value_heads, ")");
  if (model.head_dim <= 0 || model.head_dim % 2 != 0)
    throw user_error(where, ": head_dim must be a positive even number, got ", model.head_dim);
  if (get_or<bool>(config, "mlp_bias", false))
    throw user_error(where, ": mlp_bias true is not supported");
  model.rope = parse_rope(config, where);

  // transformers 5 writes num_local_experts for Qwen3-MoE; published configs say num_experts.
  model.moe.num_experts = get_or<int64_t>(config, "num_experts", get_or<int64_t>(config, "num_local_experts", 0));
  if (model.moe.num_experts > 0) {
    model.moe.num_experts_per_tok = require_positive(config, "num_experts_per_tok", where);
    model.moe.moe_intermediate_size = require_positive(config, "moe_intermediate_size", where);
    model.moe.norm_topk_prob = get_or<bool>(config, "norm_topk_prob", false);
    model.moe.decoder_sparse_step = get_or<int64_t>(config, "decoder_sparse_step", 1);
    model.moe.mlp_only_layers = get_or<std::vector<int64_t>>(config, "mlp_only_layers", {});
    if (model.moe.num_experts_per_tok > model.moe.num_experts)
      throw user_error(where, ": num_experts_per_tok exceeds num_experts");
    if (model.moe.decoder_sparse_step <= 0) throw user_error(where, ": decoder_sparse_step must be > 0");
  }

  model.attention_window = resolve_windows(config, model, where);

  if (config.contains("hybrid_override_pattern") && config["hybrid_override_pattern"].is_string()) {
    model.layer_pattern = parse_layer_pattern(config["hybrid_override_pattern"].get<std::string>(), where);
    if (static_cast<int64_t>(model.layer_pattern.size()) != model.num_hidden_layers)
      throw user_error(where, ": hybrid_override_pattern has ", model.layer_pattern.size(),
                       " layers but num_hidden_layers is ", model.num_hidden_layers);
  } else {
    model.layer_pattern.assign(model.num_hidden_layers, "*");
  }

  if (config.contains("bos_token_id") && config["bos_token_id"].is_number_integer())
    model.bos_token_id = config["bos_token_id"].get<int64_t>();
  if (config.contains("eos_token_id")) {
    const json& eos = config["eos_token_id"];
    if (eos.is_number_integer()) model.eos_token_ids.push_back(eos.get<int64_t>());
    if (eos.is_array())
      for (const json& id : eos) model.eos_token_ids.push_back(id.get<int64_t>());
  }
  return model;
}

bool ModelConfig::is_hybrid() const {
  return std::any_of(layer_pattern.begin(), layer_pattern.end(), [](const std::string& s) { return s != "*"; });
}

bool ModelConfig::layer_is_moe(int64_t layer) const {
  if (moe.num_experts <= 0) return false;
  if (std::find(moe.mlp_only_layers.begin(), moe.mlp_only_layers.end(), layer) != moe.mlp_only_layers.end())
    return false;
  return (layer + 1) % moe.decoder_sparse_step == 0;
}

}  // namespace prime::io
