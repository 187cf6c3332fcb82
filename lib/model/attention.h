// Grouped-query attention with the options of our families: q/k/v(/o) biases (Qwen2, Llama
// attention_bias), q_norm/k_norm before RoPE (Qwen3), a sliding window (Mistral; prime's SWA
// layers, optionally with sink tokens). The same class serves "*" and "SWA" layers.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "io/model_config.h"
#include "model/mixer.h"
#include "model/rope.h"
#include "model/weights.h"

namespace prime::model {

struct AttentionOptions {
  int64_t window = 0;  // 0: full causal attention; else query i sees keys j with 0 <= i-j < window
  int64_t sink_tokens = 0;  // with a window: the first sink_tokens positions stay visible
  std::string symbol = "*";
};

// Keys/values after RoPE, [B, Hkv, capacity, D], grown by doubling; keys older than the window
// (except sinks) are dropped so an SWA layer's cache stays bounded.
class KvCache : public LayerCache {
 public:
  KvCache(int64_t kv_heads, int64_t head_dim, int64_t window, int64_t sink_tokens)
      : kv_heads_(kv_heads), head_dim_(head_dim), window_(window), sink_tokens_(sink_tokens) {}
  int64_t bytes_per_sequence() const override;
  int64_t length() const override { return length_; }
  // Appends k, v [B, Hkv, T, D] at positions length(), length()+1, ...
  void append(const at::Tensor& k, const at::Tensor& v);
  at::Tensor keys() const { return keys_.narrow(2, 0, stored_); }
  at::Tensor values() const { return values_.narrow(2, 0, stored_); }
  at::Tensor positions() const { return positions_.narrow(0, 0, stored_); }
  // Drops keys the next query cannot see (outside the window and not a sink).
  void evict_outside_window();

 private:
  int64_t kv_heads_, head_dim_, window_, sink_tokens_;
  int64_t length_ = 0;  // tokens seen
  int64_t stored_ = 0;  // tokens held
  at::Tensor keys_, values_, positions_;
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

 private:
  int64_t q_heads_, kv_heads_, head_dim_;
  double norm_eps_;
  AttentionOptions options_;
  std::shared_ptr<const Rope> rope_;
  at::Tensor q_proj_, k_proj_, v_proj_, o_proj_;
  at::Tensor q_bias_, k_bias_, v_bias_, o_bias_;
  at::Tensor q_norm_, k_norm_;
};

}  // namespace prime::model
