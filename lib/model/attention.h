// Grouped-query attention with the options of our families: q/k/v(/o) biases (Qwen2, Llama
// attention_bias), q_norm/k_norm before RoPE (Qwen3), a sliding window (Mistral; prime's SWA
// layers, optionally with sink tokens). The same class serves "*" and "SWA" layers.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "io/model_config.h"
#include "model/kv_cache.h"
#include "model/mixer.h"
#include "model/rope.h"
#include "model/weights.h"

namespace prime::model {

struct AttentionOptions {
  int64_t window = 0;  // 0: full causal attention; else query i sees keys j with 0 <= i-j < window
  int64_t sink_tokens = 0;  // with a window: the first sink_tokens positions stay visible
  std::string symbol = "*";
};

class AttentionMixer : public Mixer {
 public:
  // Weights under `prefix` ("model.layers.3.self_attn." or "...swa."): q/k/v/o_proj(.weight,
  // .bias when config.attention_bias), q_norm/k_norm when config.qk_norm.
  // `rope`: shared by a model's attention layers so the angles are computed once per forward;
  // null makes a private one.
  AttentionMixer(const io::ModelConfig& config, const TensorMap& weights, const std::string& prefix,
                 AttentionOptions options, std::shared_ptr<const Rope> rope = nullptr);
  std::string symbol() const override { return options_.symbol; }
  std::unique_ptr<LayerCache> make_cache(int64_t batch, const at::Device& device) const override;
  at::Tensor forward(const at::Tensor& x, LayerCache* cache) override;
  // Block-diagonal causal mask (plus the window and sinks, counted inside each document) and
  // RoPE at the in-document positions.
  at::Tensor forward_documents(const at::Tensor& x, const Documents& documents) override;

 private:
  // q/k/v projections (+ q/k norm) of x [B, T, d]: [B, T, H, D] each, before RoPE.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> project_qkv(const at::Tensor& x) const;
  at::Tensor output(const at::Tensor& merged) const;  // o_proj (+ bias) of [B, T, Hq*D]

  int64_t q_heads_, kv_heads_, head_dim_;
  double norm_eps_;
  AttentionOptions options_;
  std::shared_ptr<const Rope> rope_;
  at::Tensor q_proj_, k_proj_, v_proj_, o_proj_;
  at::Tensor q_bias_, k_bias_, v_bias_, o_bias_;
  at::Tensor q_norm_, k_norm_;
};

}  // namespace prime::model
