#include "model/hybrid_model.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <tuple>
#include <utility>

#include "io/architecture.h"
#include "model/kv_cache.h"
#include "model/linear.h"
#include "model/recompute.h"
#include "util/error.h"

namespace prime::model {

bool stays_fp32_tensor(const std::string& name) {
  for (const char* suffix : {".A_log", ".dt_bias", ".D"})
    if (name.size() >= std::strlen(suffix) && name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
      return true;
  return false;
}

int64_t ModelCache::bytes_per_sequence() const {
  int64_t total = 0;
  for (const auto& layer : layers) total += layer->bytes_per_sequence();
  return total;
}

TensorMap prepare_weights(const TensorMap& weights, const LoadOptions& options) {
  TensorMap prepared;
  for (const auto& [name, tensor] : weights) {
    const bool floating = at::isFloatingType(tensor.scalar_type());
    const auto dtype = !floating ? tensor.scalar_type() : (stays_fp32_tensor(name) ? at::kFloat : options.dtype);
    prepared[name] = tensor.to(options.device, dtype);
  }
  if (!options.device.is_cpu()) stack_expert_tensors(prepared);  // MoE experts: one grouped GEMM, no host sync
  return prepared;
}

HybridModel::HybridModel(io::ModelConfig config, const TensorMap& weights)
    : config_(std::move(config)), weights_(weights) {
  const auto& arch = io::find_architecture(config_.model_type, config_.architecture, config_.model_type);
  const int64_t d = config_.hidden_size;
  embed_tokens_ = take_weight(weights, "", arch.name("embed_tokens"), {config_.vocab_size, d});
  final_norm_ = take_weight(weights, "", arch.name("final_norm"), {d});
  lm_head_ = config_.tie_word_embeddings ? embed_tokens_
                                         : take_weight(weights, "", arch.name("lm_head"), {config_.vocab_size, d});
  const auto rope = std::make_shared<const Rope>(config_.rope, config_.head_dim, config_.max_position_embeddings);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    Layer layer;
    layer.input_norm = take_weight(weights, "", arch.name("input_layernorm", i), {d});
    layer.post_attention_norm = take_weight(weights, "", arch.name("post_attention_layernorm", i), {d});
    layer.mixer = make_mixer(config_, weights, i, rope);
    if (config_.layer_is_moe(i)) {
      std::vector<std::string> experts;
      for (int64_t e = 0; e < config_.moe.num_experts; ++e) experts.push_back(arch.name("moe_expert_prefix", i, e));
      layer.feed_forward = std::make_unique<MoeBlock>(weights, arch.name("moe_router", i), experts, d, config_.moe);
    } else {
      layer.feed_forward = std::make_unique<SwigluMlp>(weights, arch.name("mlp_prefix", i), d, config_.intermediate_size);
    }
    layers_.push_back(std::move(layer));
  }
}

void ModelCache::set_length(int64_t tokens) {
  for (auto& layer : layers) layer->tokens = tokens;
}

ModelCache HybridModel::make_cache(int64_t batch, int64_t max_tokens) const {
  ModelCache cache;
  cache.batch = batch;
  for (const auto& layer : layers_) {
    cache.layers.push_back(layer.mixer->make_cache(batch, embed_tokens_.device()));
    if (auto* kv = dynamic_cast<KvCache*>(cache.layers.back().get()); kv && max_tokens > 0) kv->reserve(max_tokens);
  }
  return cache;
}

void HybridModel::make_static(ModelCache& cache, int64_t max_tokens) const {
  if (cache.is_static()) throw internal_error("the cache is already static");
  if (cache.length() < 1) throw user_error("static decoding starts after a prompt of at least one token");
  if (max_tokens <= cache.length())
    throw user_error("a static cache for ", max_tokens, " tokens has no room past the ", cache.length(), " already seen");
  cache.position = at::full({1}, cache.length(), at::TensorOptions().dtype(at::kLong).device(device()));
  for (auto& layer : cache.layers)
    if (auto* kv = dynamic_cast<KvCache*>(layer.get())) kv->make_static(max_tokens, cache.position);
}

void HybridModel::check_token_ids(const at::Tensor& input_ids) const {
  if (input_ids.numel() == 0 || !input_ids.device().is_cpu()) return;
  const int64_t low = input_ids.min().item<int64_t>(), high = input_ids.max().item<int64_t>();
  if (low < 0 || high >= config_.vocab_size)
    throw user_error("token id out of range [0, ", config_.vocab_size, "): ", low < 0 ? low : high);
}

at::Tensor HybridModel::forward(const at::Tensor& input_ids, ModelCache* cache, std::vector<at::Tensor>* layer_outputs) {
  ForwardTrace trace;
  if (layer_outputs)
    for (int64_t i = 0; i < num_layers(); ++i) trace.layers.push_back(i);
  ForwardOptions options;
  options.trace = layer_outputs ? &trace : nullptr;
  at::Tensor logits = forward(input_ids, cache, options);
  if (layer_outputs)
    for (auto& [layer, traced] : trace.traced) layer_outputs->push_back(traced.layer_output);
  return logits;
}

std::pair<at::Tensor, at::Tensor> HybridModel::layer_parts(int64_t index, const at::Tensor& hidden,
                                                         const at::Tensor& pending, LayerCache* layer_cache,
                                                         const Documents* documents, LayerTrace* trace) {
  if (documents && layer_cache) throw internal_error("packed documents run without a cache");
  if (trace && pending.defined()) throw internal_error("a traced layer takes its whole input");
  Layer& layer = layers_.at(index);
  at::Tensor input = hidden, mixer_input;
  if (pending.defined())
    std::tie(input, mixer_input) = add_rms_norm(hidden, pending, layer.input_norm, config_.rms_norm_eps);
  else
    mixer_input = rms_norm(hidden, layer.input_norm, config_.rms_norm_eps);
  at::Tensor mixed = documents ? layer.mixer->forward_documents(mixer_input, *documents)
                               : layer.mixer->forward(mixer_input, layer_cache);
  // The residual add and the post-attention norm: one fused kernel at inference on CUDA.
  auto [after_mixer, ffn_input] = add_rms_norm(input, mixed, layer.post_attention_norm, config_.rms_norm_eps);
  at::Tensor fed = layer.feed_forward->forward(ffn_input);
  if (trace) *trace = {hidden, mixer_input, mixed, after_mixer + fed};
  return {after_mixer, fed};
}

at::Tensor HybridModel::forward_layer(int64_t index, const at::Tensor& hidden, LayerCache* layer_cache,
                                      LayerTrace* trace, const Documents* documents) {
  auto [after_mixer, fed] = layer_parts(index, hidden, at::Tensor(), layer_cache, documents, trace);
  return trace ? trace->layer_output : after_mixer + fed;
}

at::Tensor HybridModel::final_norm(const at::Tensor& hidden) const {
  return rms_norm(hidden, final_norm_, config_.rms_norm_eps);
}

at::Tensor HybridModel::forward(const at::Tensor& input_ids, ModelCache* cache, const ForwardOptions& options) {
  if (input_ids.dim() != 2) throw user_error("input_ids must be [batch, tokens], got ", input_ids.dim(), " dims");
  check_token_ids(input_ids);
  if (cache && static_cast<int64_t>(cache->layers.size()) != num_layers())
    throw internal_error("cache has ", cache->layers.size(), " layers, model has ", num_layers());
  if (cache && cache->is_static() && input_ids.size(1) != 1)
    throw user_error("a static cache decodes one token per sequence per step, got ", input_ids.size(1));
  if (cache && options.recompute) throw internal_error("activation recomputation runs without a cache");
  if (cache && options.documents) throw internal_error("packed documents run without a cache");
  const Documents* documents = options.documents;
  if (documents && (documents->batch != input_ids.size(0) || documents->steps != input_ids.size(1)))
    throw internal_error("document positions are [", documents->batch, ", ", documents->steps, "], input_ids [",
                         input_ids.size(0), ", ", input_ids.size(1), "]");
  at::Tensor hidden = at::embedding(embed_tokens_, input_ids.to(embed_tokens_.device()));
  // Without autograd each layer's output is left as hidden + pending (layer_parts): the next layer's
  // input norm, or the final norm, adds them in its fused kernel (one launch fewer per layer).
  at::Tensor pending;
  for (int64_t i = 0; i < num_layers(); ++i) {
    LayerCache* layer_cache = cache ? cache->layers[i].get() : nullptr;
    LayerTrace* trace = nullptr;
    if (options.trace && std::find(options.trace->layers.begin(), options.trace->layers.end(), i) !=
                             options.trace->layers.end())
      trace = &options.trace->traced[i];
    if (!trace && !at::GradMode::is_enabled()) {
      std::tie(hidden, pending) = layer_parts(i, hidden, pending, layer_cache, documents);
      continue;
    }
    if (pending.defined()) hidden = hidden + std::exchange(pending, at::Tensor());
    if (options.recompute && at::GradMode::is_enabled() && !trace)
      hidden = recompute_in_backward(
          [this, i, documents](const at::Tensor& input) { return forward_layer(i, input, nullptr, nullptr, documents); },
          hidden);
    else
      hidden = forward_layer(i, hidden, layer_cache, trace, documents);
  }
  if (cache && cache->is_static()) cache->position.add_(1);
  at::Tensor normed = pending.defined() ? add_rms_norm(hidden, pending, final_norm_, config_.rms_norm_eps).second
                                        : final_norm(hidden);
  return options.return_hidden ? normed : model::linear(normed, lm_head_);
}

}  // namespace prime::model
