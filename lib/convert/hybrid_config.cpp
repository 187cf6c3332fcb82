#include "convert/hybrid_config.h"

#include <algorithm>

#include "io/architecture.h"
#include "model/gdn.h"
#include "model/gka.h"
#include "model/mamba2.h"
#include "util/error.h"

namespace prime::convert {
namespace {

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

const nlohmann::json& sub_config(const io::ModelConfig& config, const std::string& symbol, int64_t layer) {
  const std::string key = sub_config_key(symbol);
  auto found = config.raw.find(key);
  if (found == config.raw.end() || !found->is_object())
    throw user_error("layer ", layer, " (", symbol, "): config.json has no ", key);
  return *found;
}

std::vector<io::TensorSpec> gka_specs(const nlohmann::json& sub, const std::string& prefix, int64_t layer) {
  const auto c = model::GkaConfig::from_json(sub, "layer " + std::to_string(layer));
  const int64_t d = c.hidden_size, D = c.head_dim, H = c.num_heads(), K = c.conv_size;
  const int64_t q = c.num_q_heads * D, k = c.num_k_heads * D, v = c.num_v_heads * D;
  // HMF always holds a_proj, A_log and dt_bias, even without the forgetting gate.
  std::vector<io::TensorSpec> specs = {{prefix + "q_proj.weight", {q, d}},
                                       {prefix + "k_proj.weight", {k, d}},
                                       {prefix + "v_proj.weight", {v, d}},
                                       {prefix + "a_proj.weight", {H, d}}};
  if (c.use_beta_gate) {
    specs.push_back({prefix + "b_proj.weight", {H, d}});
    specs.push_back({prefix + "b_proj.bias", {H}});
  }
  if (c.use_alpha_connection) {
    specs.push_back({prefix + "alpha_proj.weight", {H, d}});
    specs.push_back({prefix + "alpha_proj.bias", {H}});
  }
  specs.push_back({prefix + "A_log", {H}});
  specs.push_back({prefix + "dt_bias", {H}});
  specs.push_back({prefix + "q_conv1d.weight", {q, 1, K}});
  specs.push_back({prefix + "k_conv1d.weight", {k, 1, K}});
  if (c.use_v_conv) specs.push_back({prefix + "v_conv1d.weight", {v, 1, K}});
  if (c.use_gate) specs.push_back({prefix + "g_proj.weight", {H * D, d}});
  specs.push_back({prefix + "o_norm.weight", {D}});
  specs.push_back({prefix + "o_proj.weight", {d, H * D}});
  return specs;
}

std::vector<io::TensorSpec> gdn_specs(const nlohmann::json& sub, const std::string& prefix, int64_t layer) {
  const auto c = model::GdnConfig::from_json(sub, std::to_string(layer));
  const int64_t d = c.hidden_size, D = c.head_dim, H = c.num_heads(), K = c.conv_size;
  const int64_t q = c.num_q_heads * D, k = c.num_k_heads * D, v = c.num_v_heads * D;
  std::vector<io::TensorSpec> specs = {{prefix + "q_proj.weight", {q, d}}, {prefix + "k_proj.weight", {k, d}},
                                       {prefix + "v_proj.weight", {v, d}}, {prefix + "b_proj.weight", {H, d}},
                                       {prefix + "gk_proj.weight", {H, d}}, {prefix + "A_log", {H}},
                                       {prefix + "dt_bias", {H}}};
  if (c.use_short_conv) {
    const std::pair<const char*, int64_t> convs[] = {{"q_conv1d", q}, {"k_conv1d", k}, {"v_conv1d", v}};
    for (const auto& [name, channels] : convs) {
      specs.push_back({prefix + name + ".weight", {channels, 1, K}});
      if (c.conv_bias) specs.push_back({prefix + name + ".bias", {channels}});
    }
  }
  if (c.use_gate) specs.push_back({prefix + "g_proj.weight", {H * D, d}});
  specs.push_back({prefix + "o_norm.weight", {D}});
  specs.push_back({prefix + "o_proj.weight", {d, H * D}});
  return specs;
}

std::vector<io::TensorSpec> mamba2_specs(const nlohmann::json& sub, const std::string& prefix, int64_t layer) {
  const auto c = model::Mamba2Config::from_json(sub, std::to_string(layer));
  const int64_t d = c.hidden_size, D = c.head_dim, H = c.num_heads(), channels = c.conv_channels();
  std::vector<io::TensorSpec> specs = {{prefix + "in_proj.weight", {c.in_proj_rows(), d}},
                                       {prefix + "conv1d.weight", {channels, 1, c.conv_size}}};
  if (c.conv_bias) specs.push_back({prefix + "conv1d.bias", {channels}});
  specs.push_back({prefix + "dt_bias", {H}});
  specs.push_back({prefix + "A_log", {H}});
  specs.push_back({prefix + "D", {H}});
  specs.push_back({prefix + "norm.weight", {c.num_q_heads * D}});
  specs.push_back({prefix + "out_proj.weight", {d, c.num_q_heads * D}});
  if (c.use_qk_norm) {
    specs.push_back({prefix + "B_norm.weight", {D}});
    specs.push_back({prefix + "C_norm.weight", {D}});
  }
  return specs;
}

// The attention tensors of `layer` among a Transformer's specs, with their prefix swapped.
std::vector<io::TensorSpec> attention_specs(const std::vector<io::TensorSpec>& all, const std::string& from_prefix,
                                            const std::string& to_prefix) {
  std::vector<io::TensorSpec> specs;
  for (const auto& spec : all)
    if (starts_with(spec.name, from_prefix))
      specs.push_back({to_prefix + spec.name.substr(from_prefix.size()), spec.shape});
  return specs;
}

std::vector<io::TensorSpec> mixer_specs(const io::ModelConfig& config, const std::vector<io::TensorSpec>& transformer,
                                        int64_t layer) {
  const auto& arch = io::find_architecture(config.model_type, config.architecture, config.model_type);
  const std::string& symbol = config.layer_pattern.at(layer);
  const std::string attention_prefix = arch.name("attention_prefix", layer);
  const std::string prefix = arch.name("layer_prefix", layer) + mixer_infix(symbol);
  if (symbol == "*") return attention_specs(transformer, attention_prefix, attention_prefix);
  if (symbol == "SWA") return attention_specs(transformer, attention_prefix, prefix);
  const nlohmann::json& sub = sub_config(config, symbol, layer);
  if (symbol == "GKA") return gka_specs(sub, prefix, layer);
  if (symbol == "GDN") return gdn_specs(sub, prefix, layer);
  if (symbol == "M2") return mamba2_specs(sub, prefix, layer);
  throw internal_error("no tensor specs for layer type ", symbol);
}

}  // namespace

std::string sub_config_key(const std::string& symbol) {
  if (symbol == "GKA") return "gka_config";
  if (symbol == "GDN") return "gdn_config";
  if (symbol == "M2") return "mamba2_config";
  if (symbol == "SWA") return "swa_config";
  return "";
}

std::string mixer_infix(const std::string& symbol) {
  if (symbol == "GKA") return "gka.";
  if (symbol == "GDN") return "gdn.";
  if (symbol == "M2") return "mamba.";
  if (symbol == "SWA") return "swa.";
  return "";
}

nlohmann::json sub_config_json(const io::ModelConfig& source, const std::string& symbol, const HybridOptions& options) {
  const int64_t d = source.hidden_size, D = source.head_dim, hq = source.num_attention_heads,
                hkv = source.num_key_value_heads;
  if (symbol == "GKA")
    return {{"hidden_size", d},         {"head_dim", D},
            {"num_q_heads", hq},        {"num_k_heads", hkv},
            {"num_v_heads", hkv},       {"use_alpha_connection", true},
            {"use_v_conv", true},       {"use_forgetting_gate", true},
            {"gla_rescale", true},      {"solver_type", "chebyshev"},
            {"bp_lambda", true},        {"num_iter", 30},
            {"ridge_strength", 0.02},   {"use_gate", true},
            {"conv_size", 4},           {"norm_eps", 1e-6},
            {"use_forgetting_gate_kk", true}, {"use_beta_gate", true},
            {"chunk_size", 64},         {"kv_proj_rank", nullptr},
            {"kv_learnable_residual", false}};
  if (symbol == "GDN")
    return {{"hidden_size", d},        {"head_dim", D},           {"num_q_heads", hq},
            {"num_k_heads", hkv},      {"num_v_heads", hkv},      {"use_gate", true},
            {"use_short_conv", true},  {"allow_neg_eigval", false}, {"conv_size", 4},
            {"conv_bias", false},      {"norm_eps", 1e-5},        {"kv_proj_rank", nullptr},
            {"kv_learnable_residual", false}};
  if (symbol == "M2")
    return {{"d_model", d},
            {"d_inner", hq * D},
            {"d_xb", hkv * D},
            {"intermediate_size", source.intermediate_size},
            {"hidden_act", source.hidden_act},
            {"rms_norm_eps", source.rms_norm_eps},
            {"n_layer", source.num_hidden_layers},
            {"ssm_cfg", {{"expand", 1}, {"ngroups", hq}, {"d_state", D}}},
            {"use_qk_norm", true},
            {"use_pos_emb", false}};
  if (symbol == "SWA") {
    if (options.swa_window <= 0) throw user_error("the SWA window must be > 0, got ", options.swa_window);
    return {{"window_size", options.swa_window}};
  }
  throw user_error("no sub-config for layer type '", symbol, "'");
}

nlohmann::json hybrid_config_json(const io::ModelConfig& source, const std::vector<std::string>& pattern,
                                  const HybridOptions& options) {
  const auto& arch = io::find_architecture(source.model_type, source.architecture, source.model_type);
  if (static_cast<int64_t>(pattern.size()) != source.num_hidden_layers)
    throw user_error("layer pattern has ", pattern.size(), " layers but the source has ", source.num_hidden_layers);
  // Validates every symbol.
  io::parse_layer_pattern(io::join_layer_pattern(pattern), "layer pattern");
  nlohmann::json config = source.raw;
  if (auto types = config.find("layer_types"); types != config.end() && types->is_array())
    for (const auto& type : *types)
      if (type == "sliding_attention")
        throw user_error("the source's layer_types assigns sliding_attention to some layers; a hybrid's layer_types ",
                         "holds its pattern instead, so those windows cannot be kept (not supported)");
  config["model_type"] = arch.hybrid_model_type;
  config["architectures"] = nlohmann::json::array({arch.hybrid_architecture});
  config["hybrid_override_pattern"] = io::join_layer_pattern(pattern);
  config["layer_types"] = pattern;
  for (const char* symbol : {"GKA", "GDN", "M2", "SWA"}) {
    const bool used = std::find(pattern.begin(), pattern.end(), symbol) != pattern.end();
    if (used)
      config[sub_config_key(symbol)] = sub_config_json(source, symbol, options);
    else
      config.erase(sub_config_key(symbol));
  }
  if (!options.torch_dtype.empty()) {
    if (config.contains("dtype")) config["dtype"] = options.torch_dtype;
    if (config.contains("torch_dtype") || !config.contains("dtype")) config["torch_dtype"] = options.torch_dtype;
  }
  return config;
}

std::vector<io::TensorSpec> mixer_tensor_specs(const io::ModelConfig& hybrid_config, int64_t layer) {
  if (layer < 0 || layer >= hybrid_config.num_hidden_layers)
    throw internal_error("layer ", layer, " out of range for mixer_tensor_specs");
  return mixer_specs(hybrid_config, io::transformer_tensor_specs(hybrid_config), layer);
}

std::vector<io::TensorSpec> hybrid_tensor_specs(const io::ModelConfig& hybrid_config) {
  const auto& arch = io::find_architecture(hybrid_config.model_type, hybrid_config.architecture,
                                           hybrid_config.model_type);
  const auto transformer = io::transformer_tensor_specs(hybrid_config);
  std::vector<io::TensorSpec> specs;
  int64_t layer = -1;  // before the first layer: embeddings
  bool mixer_done = false;
  for (const auto& spec : transformer) {
    // Layers appear in order; a layer's attention tensors are replaced by its mixer's, once.
    while (layer + 1 < hybrid_config.num_hidden_layers && starts_with(spec.name, arch.name("layer_prefix", layer + 1))) {
      ++layer;
      mixer_done = false;
    }
    if (layer >= 0 && starts_with(spec.name, arch.name("attention_prefix", layer))) {
      if (!mixer_done)
        for (auto& mixer : mixer_specs(hybrid_config, transformer, layer)) specs.push_back(std::move(mixer));
      mixer_done = true;
      continue;
    }
    specs.push_back(spec);
  }
  return specs;
}

bool is_fp32_parameter(const std::string& name) {
  return ends_with(name, ".A_log") || ends_with(name, ".dt_bias") || ends_with(name, ".D");
}

}  // namespace prime::convert
