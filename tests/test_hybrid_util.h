// A tiny hybrid (hidden 64, 4 heads, 2 kv heads, head dim 16, vocab 97) with any layer pattern:
// the synthetic Qwen3's attention tensors replaced by each SSM type's tensors (formats.md layout,
// written out independently of the mixers), decay parameters in a realistic range.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "io/source.h"
#include "io/synthetic.h"
#include "model/weights.h"

namespace prime::test {

constexpr int64_t kHidden = 64, kHeads = 4, kKvHeads = 2, kHeadDim = 16;

// The tensors formats.md places under each SSM prefix, written out independently of the mixers.
inline std::vector<io::TensorSpec> ssm_specs(const std::string& symbol, const std::string& layer_prefix,
                                             int64_t head_dim = kHeadDim) {
  const int64_t d = kHidden, D = head_dim, H = kHeads, q = kHeads * D, kv = kKvHeads * D;
  std::vector<io::TensorSpec> specs;
  auto add = [&](const std::string& prefix, const std::string& name, std::vector<int64_t> shape) {
    specs.push_back({layer_prefix + prefix + name, std::move(shape)});
  };
  if (symbol == "GDN" || symbol == "GKA") {
    const std::string p = symbol == "GDN" ? "gdn." : "gka.";
    add(p, "q_proj.weight", {q, d});
    add(p, "k_proj.weight", {kv, d});
    add(p, "v_proj.weight", {kv, d});
    add(p, "b_proj.weight", {H, d});
    add(p, symbol == "GDN" ? "gk_proj.weight" : "a_proj.weight", {H, d});
    add(p, "A_log", {H});
    add(p, "dt_bias", {H});
    add(p, "q_conv1d.weight", {q, 1, 4});
    add(p, "k_conv1d.weight", {kv, 1, 4});
    add(p, "v_conv1d.weight", {kv, 1, 4});
    add(p, "g_proj.weight", {H * D, d});
    add(p, "o_norm.weight", {D});
    add(p, "o_proj.weight", {d, H * D});
    if (symbol == "GKA") {
      add(p, "b_proj.bias", {H});
      add(p, "alpha_proj.weight", {H, d});
      add(p, "alpha_proj.bias", {H});
    }
  } else if (symbol == "M2") {
    add("mamba.", "in_proj.weight", {2 * q + 2 * kv + H, d});
    add("mamba.", "conv1d.weight", {2 * kv + q, 1, 4});
    add("mamba.", "conv1d.bias", {2 * kv + q});
    add("mamba.", "dt_bias", {H});
    add("mamba.", "A_log", {H});
    add("mamba.", "D", {H});
    add("mamba.", "norm.weight", {q});
    add("mamba.", "out_proj.weight", {d, q});
    add("mamba.", "B_norm.weight", {D});
    add("mamba.", "C_norm.weight", {D});
  } else if (symbol == "SWA") {
    for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}) {
      const bool is_q = std::string(name).rfind("q_", 0) == 0, is_o = std::string(name).rfind("o_", 0) == 0;
      add("swa.", name, is_o ? std::vector<int64_t>{d, q} : std::vector<int64_t>{is_q ? q : kv, d});
    }
    add("swa.", "q_norm.weight", {D});
    add("swa.", "k_norm.weight", {D});
  }
  return specs;
}

struct Built {
  io::ModelConfig config;
  model::TensorMap weights;
};

// swa: the swa_config (window 6 unless given).
// head_dim: every layer's head dim (the SSM configs must agree with the model's).
inline Built build_hybrid(const std::vector<std::string>& pattern,
                          const nlohmann::json& swa = {{"window_size", 6}}, int64_t head_dim = kHeadDim) {
  auto source = io::resolve_source("synthetic:qwen3-0.6b@layers=" + std::to_string(pattern.size()) +
                                   ",hidden=64,heads=4,kv_heads=2,head_dim=" + std::to_string(head_dim) +
                                   ",intermediate=96,vocab=97,seed=5");
  nlohmann::json raw = source.config.raw;
  raw["model_type"] = "hybrid_qwen3";
  raw["hybrid_override_pattern"] = io::join_layer_pattern(pattern);
  raw["gdn_config"] = {{"hidden_size", kHidden}, {"head_dim", head_dim}, {"num_q_heads", kHeads},
                       {"num_k_heads", kKvHeads}, {"num_v_heads", kKvHeads}};
  raw["gka_config"] = {{"hidden_size", kHidden}, {"head_dim", head_dim}, {"num_q_heads", kHeads},
                       {"num_k_heads", kKvHeads}, {"num_v_heads", kKvHeads}, {"num_iter", 30}};
  raw["mamba2_config"] = {{"d_model", kHidden}, {"d_inner", kHeads * head_dim}, {"d_xb", kKvHeads * head_dim},
                          {"ssm_cfg", {{"d_state", head_dim}, {"ngroups", kHeads}}}};
  raw["swa_config"] = swa;
  Built built{io::ModelConfig::from_json(raw, "test hybrid"), {}};
  built.weights = io::load_source_weights(source);
  for (size_t i = 0; i < pattern.size(); ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    if (pattern[i] == "*") continue;
    for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "q_norm.weight",
                             "k_norm.weight"})
      built.weights.erase(prefix + "self_attn." + name);
    for (const auto& spec : ssm_specs(pattern[i], prefix, head_dim))
      built.weights[spec.name] = io::synthetic_tensor(spec.name, spec.shape, 11);
  }
  for (auto& [name, tensor] : built.weights)  // decay parameters in a realistic range
    if (name.size() > 5 && name.compare(name.size() - 5, 5, "A_log") == 0) tensor = at::log(at::rand_like(tensor) * 15 + 1);
  return built;
}


}  // namespace prime::test
