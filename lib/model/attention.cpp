#include "model/attention.h"

#include <cmath>
#include <tuple>
#include <vector>

#include "kernels/rope/rope.h"
#include "model/flash_prefill.h"
#include "model/linear.h"
#include "model/rms_norm.h"
#include "util/error.h"

namespace prime::model {

AttentionMixer::AttentionMixer(const io::ModelConfig& config, const TensorMap& weights, const std::string& prefix,
                               AttentionOptions options, std::shared_ptr<const Rope> rope)
    : q_heads_(config.num_attention_heads),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      norm_eps_(config.rms_norm_eps),
      options_(options),
      rope_(rope ? std::move(rope)
                 : std::make_shared<const Rope>(config.rope, config.head_dim, config.max_position_embeddings)) {
  const int64_t d = config.hidden_size, q_dim = q_heads_ * head_dim_, kv_dim = kv_heads_ * head_dim_;
  q_proj_ = take_weight(weights, prefix, "q_proj.weight", {q_dim, d});
  k_proj_ = take_weight(weights, prefix, "k_proj.weight", {kv_dim, d});
  v_proj_ = take_weight(weights, prefix, "v_proj.weight", {kv_dim, d});
  o_proj_ = take_weight(weights, prefix, "o_proj.weight", {d, q_dim});
  if (config.attention_bias) {
    q_bias_ = take_weight(weights, prefix, "q_proj.bias", {q_dim});
    k_bias_ = take_weight(weights, prefix, "k_proj.bias", {kv_dim});
    v_bias_ = take_weight(weights, prefix, "v_proj.bias", {kv_dim});
  }
  o_bias_ = take_optional_weight(weights, prefix, "o_proj.bias", {d});  // Llama with attention_bias
  if (config.qk_norm) {
    q_norm_ = take_weight(weights, prefix, "q_norm.weight", {head_dim_});
    k_norm_ = take_weight(weights, prefix, "k_norm.weight", {head_dim_});
  }
}

std::unique_ptr<LayerCache> AttentionMixer::make_cache(int64_t, const at::Device&) const {
  return std::make_unique<KvCache>(kv_heads_, head_dim_, options_.window, options_.sink_tokens);
}

namespace {

// q, k and v [B, T, heads, D] of x, not normalised. They share x: one launch at decode, at::linear
// each elsewhere (model/linear.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor> project_heads(const at::Tensor& x, at::TensorList weights,
                                                             at::TensorList biases, int64_t q_heads, int64_t kv_heads,
                                                             int64_t head_dim) {
  const int64_t batch = x.size(0), steps = x.size(1);
  const std::vector<at::Tensor> projected = model::linear_group(x, weights, biases);
  return {projected[0].view({batch, steps, q_heads, head_dim}), projected[1].view({batch, steps, kv_heads, head_dim}),
          projected[2].view({batch, steps, kv_heads, head_dim})};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> AttentionMixer::project_qkv(const at::Tensor& x) const {
  auto [q, k, v] = project_heads(x, {q_proj_, k_proj_, v_proj_}, {q_bias_, k_bias_, v_bias_}, q_heads_, kv_heads_,
                                 head_dim_);
  if (q_norm_.defined()) {
    q = rms_norm(q, q_norm_, norm_eps_);
    k = rms_norm(k, k_norm_, norm_eps_);
  }
  return {q, k, v};
}

at::Tensor AttentionMixer::forward_documents(const at::Tensor& x, const Documents& documents) {
  if (documents.one_per_row) return forward(x, nullptr);
  const int64_t batch = x.size(0), steps = x.size(1);
  auto [q, k, v] = project_qkv(x);
  std::tie(q, k) = rope_->apply_positions(q, k, documents.positions, documents.max_position);
  at::Tensor mask = documents.visible;
  if (options_.window > 0) {
    // Inside one document, in-document positions differ as token indices do.
    const at::Tensor qp = documents.positions.unsqueeze(2), kp = documents.positions.unsqueeze(1);
    at::Tensor in_window = (qp - kp) < options_.window;
    if (options_.sink_tokens > 0) in_window = in_window.logical_or(kp < options_.sink_tokens);
    mask = mask.logical_and(in_window.unsqueeze(1));
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  at::Tensor attended = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                         mask, 0.0, /*is_causal=*/false, scale,
                                                         /*enable_gqa=*/kv_heads_ != q_heads_);
  return output(attended.transpose(1, 2).reshape({batch, steps, q_heads_ * head_dim_}));
}

at::Tensor AttentionMixer::forward(const at::Tensor& x, LayerCache* layer_cache) {
  const int64_t batch = x.size(0), steps = x.size(1);
  auto* cache = dynamic_cast<KvCache*>(layer_cache);
  if (layer_cache && !cache) throw internal_error("attention layer given a non-KV cache");
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  if (cache && cache->is_static()) {
    // A decode step whose position is read on the device: nothing here waits for the host.
    if (steps != 1) throw user_error("a static KV cache takes one token per step, got ", steps);
    auto [q, k, v] = project_heads(x, {q_proj_, k_proj_, v_proj_}, {q_bias_, k_bias_, v_bias_}, q_heads_, kv_heads_,
                                   head_dim_);
    const at::Tensor& position = cache->position();
    if (!q_norm_.defined()) {
      std::tie(q, k) = rope_->apply_at(q, k, position);
    } else {
      // q_norm, k_norm and the rotation: one launch where kernels/rope serves them (the same bits
      // as the norms' kernel and then the rotation's), else the norms and then apply_at.
      const auto [cos, sin] = rope_->angles_at(q, position);
      if (kernels::rope_norm_apply(q, k, q_norm_, k_norm_, cos, sin))
        std::tie(q, k) = kernels::rope_norm_rotate(q, k, q_norm_, k_norm_, norm_eps_, cos, sin);
      else
        std::tie(q, k) = rope_->apply_at(rms_norm(q, q_norm_, norm_eps_), rms_norm(k, k_norm_, norm_eps_), position);
    }
    const KvCache::StepView view = cache->write_step(k.transpose(1, 2), v.transpose(1, 2));
    at::Tensor attended = attend_one_token(q.transpose(1, 2), view, scale);
    return output(attended.transpose(1, 2).reshape({batch, 1, q_heads_ * head_dim_}));
  }
  auto [q, k, v] = project_qkv(x);
  const int64_t start = cache ? cache->length() : 0;
  at::Tensor query_positions = at::arange(start, start + steps, at::TensorOptions().dtype(at::kLong));
  std::tie(q, k) = rope_->apply(q, k, start);
  q = q.transpose(1, 2);  // [B,H,T,D]
  k = k.transpose(1, 2);
  v = v.transpose(1, 2);

  at::Tensor key_positions = query_positions;
  if (cache) {
    cache->append(k, v);
    k = cache->keys();
    v = cache->values();
    key_positions = cache->positions();
  }
  // A prompt's chunk against the whole cache, full attention: causal aligned to the bottom right
  // (the cache evicts nothing without a window: keys sit at positions 0 .. Tk - 1), which flash
  // attention computes without a mask.
  if (cache && options_.window <= 0 && steps > 1 && flash_prefill_apply(q, k, v))
    return output(flash_prefill(q, k, v, scale).transpose(1, 2).reshape({batch, steps, q_heads_ * head_dim_}));
  // Visibility: causal, and inside the window (or a sink) when there is one.
  at::Tensor mask;
  const bool plain_causal = options_.window <= 0 && key_positions.size(0) == steps;
  const bool sees_everything = options_.window <= 0 && steps == 1;
  if (!plain_causal && !sees_everything) {
    at::Tensor qp = query_positions.unsqueeze(1), kp = key_positions.unsqueeze(0);
    mask = kp <= qp;
    if (options_.window > 0) {
      at::Tensor in_window = (qp - kp) < options_.window;
      if (options_.sink_tokens > 0) in_window = in_window.logical_or(kp < options_.sink_tokens);
      mask = mask.logical_and(in_window);
    }
    mask = mask.to(x.device());
  }
  // enable_gqa: query head h reads kv head h / G (repeat-interleave) without copying the cache.
  at::Tensor attended = at::scaled_dot_product_attention(
      q, k, v, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt, 0.0,
      /*is_causal=*/plain_causal && steps > 1, scale,
      /*enable_gqa=*/kv_heads_ != q_heads_);
  if (cache) cache->evict_outside_window();
  return output(attended.transpose(1, 2).reshape({batch, steps, q_heads_ * head_dim_}));
}

at::Tensor AttentionMixer::output(const at::Tensor& merged) const {
  return model::linear(merged, o_proj_, o_bias_);
}

}  // namespace prime::model
