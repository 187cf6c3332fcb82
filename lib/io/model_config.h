// config.json of a Hugging Face causal LM (and of prime's hybrids built from one), parsed into the
// fields prime honours. Both RoPE layouts are read: transformers <= 4 (`rope_theta` +
// `rope_scaling`) and >= 5 (`rope_parameters`).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace prime::io {

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3 | yarn | dynamic
  double theta = 10000.0;
  double factor = 1.0;
  double partial_rotary_factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;  // 0: not given (use max_position_embeddings)
  // yarn
  std::optional<double> attention_factor;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  bool truncate = true;
};

struct MoeConfig {
  int64_t num_experts = 0;  // 0: dense model
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = false;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
};

struct ModelConfig {
  std::string model_type;    // as in config.json ("qwen3", "hybrid_qwen3", ...)
  std::string family;        // template family: qwen3, qwen3_moe, qwen2, llama, mistral
  std::string architecture;  // architectures[0]
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool qk_norm = false;  // Qwen3 q_norm/k_norm (from the architecture template)
  std::string hidden_act = "silu";
  RopeConfig rope;
  MoeConfig moe;
  // Per-layer sliding window (0 = full attention), resolved from layer_types / sliding_window /
  // use_sliding_window + max_window_layers as transformers does.
  std::vector<int64_t> attention_window;
  // Per-layer mixer symbol: "*" attention, "GKA", "GDN", "M2", "SWA". All "*" for a Transformer.
  std::vector<std::string> layer_pattern;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  nlohmann::json raw;  // the whole config.json, for sub-configs and pass-through

  // Parses config.json content. `where` names the source in error messages.
  static ModelConfig from_json(const nlohmann::json& config, const std::string& where);

  bool is_hybrid() const;
  bool layer_is_moe(int64_t layer) const;
  int64_t num_q_heads() const { return num_attention_heads; }
};

// "GKA-*-GDN" <-> {"GKA","*","GDN"}; symbols validated (UserError on unknown ones).
std::vector<std::string> parse_layer_pattern(const std::string& pattern, const std::string& where);
std::string join_layer_pattern(const std::vector<std::string>& symbols);

}  // namespace prime::io
