// The config.json of a primed hybrid (design/formats.md, "Output"): the source config plus the
// hybrid model type, the layer pattern and one sub-config per used mixer type; and the tensors a
// checkpoint of such a config holds.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "io/model_config.h"
#include "io/source.h"

namespace prime::convert {

struct HybridOptions {
  int64_t swa_window = 2048;  // swa_config.window_size
  std::string torch_dtype;    // "bfloat16", "float32", ...: rewrites torch_dtype/dtype; empty keeps them
};

// "gka_config", "gdn_config", "mamba2_config", "swa_config"; empty for "*".
std::string sub_config_key(const std::string& symbol);
// Tensor name infix of a mixer inside its layer: "gka.", "gdn.", "mamba.", "swa."; "" for "*".
std::string mixer_infix(const std::string& symbol);

// The sub-config of one mixer type derived from the source's attention shape (HMF's defaults:
// expanded heads = query heads, k/v heads = the source's kv heads, head_dim from the source).
nlohmann::json sub_config_json(const io::ModelConfig& source, const std::string& symbol,
                               const HybridOptions& options = {});

// The output config.json: the source's own fields, then model_type "hybrid_<family>",
// architectures ["Hybrid<Family>ForCausalLM"], hybrid_override_pattern, layer_types (= the
// pattern's symbols, as HMF writes them) and a sub-config per used type (stale ones removed).
// UserError when the pattern's length is not the layer count, a symbol is unknown, or the
// source assigns per-layer sliding_attention in layer_types (a hybrid's layer_types is the pattern).
nlohmann::json hybrid_config_json(const io::ModelConfig& source, const std::vector<std::string>& pattern,
                                  const HybridOptions& options = {});

// The tensors of layer `layer`'s mixer (full names) in a hybrid of this config, shaped as the
// loaders in lib/model take them (sub-configs parsed by their from_json).
std::vector<io::TensorSpec> mixer_tensor_specs(const io::ModelConfig& hybrid_config, int64_t layer);

// Every tensor a hybrid checkpoint of this config holds, in layer order: embeddings, per layer
// input norm, mixer, post-attention norm, MLP or MoE, then final norm and lm_head (untied).
std::vector<io::TensorSpec> hybrid_tensor_specs(const io::ModelConfig& hybrid_config);

// SSM decay/skip parameters that stay fp32 whatever the weights' dtype (A_log, dt_bias, D).
bool is_fp32_parameter(const std::string& name);

}  // namespace prime::convert
