// A decoder-only LM whose layers each hold one mixer (attention, SWA, GKA, GDN or Mamba-2, per
// config.layer_pattern) and one feed-forward (SwiGLU MLP or MoE). A plain Transformer is the
// all-"*" pattern. The forward loop reads like llama.cpp's hybrid graphs: one mixer per layer.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "model/feed_forward.h"
#include "model/mixer.h"
#include "model/rope.h"
#include "model/weights.h"

namespace prime::model {

// What a forward keeps of each traced layer, for layer-local losses (alignment): the layer's
// input hidden state, its mixer's input (after input_layernorm) and output, and the layer output.
struct LayerTrace {
  at::Tensor layer_input, mixer_input, mixer_output, layer_output;
};
struct ForwardTrace {
  std::vector<int64_t> layers;           // which layers to trace
  std::map<int64_t, LayerTrace> traced;  // filled by forward()
};

struct ForwardOptions {
  // Return the final hidden state after the final norm, before lm_head ([B,T,hidden]), so that a
  // loss over a large vocabulary can run in chunks.
  bool return_hidden = false;
  ForwardTrace* trace = nullptr;
  // Per-layer activation recomputation: each layer keeps only its input for backward and runs
  // again during it (no cache allowed).
  bool recompute = false;
  // Packed rows of several documents (no cache): attention stays inside each document and
  // rotates by in-document positions; SSM states restart at every document.
  const Documents* documents = nullptr;
};

// One LayerCache per layer: KV caches for attention, fp32 states for SSMs.
struct ModelCache {
  std::vector<std::unique_ptr<LayerCache>> layers;
  int64_t batch = 0;
  // Static mode (HybridModel::make_static): the next token's position, int64 [1] on the model's
  // device, read by the attention layers on the device and advanced by each forward.
  at::Tensor position;

  bool is_static() const { return position.defined(); }
  int64_t length() const { return layers.empty() ? 0 : layers.front()->length(); }
  // Host bookkeeping only (the device state is not touched): after CUDA-graph replays.
  void set_length(int64_t tokens);
  int64_t bytes_per_sequence() const;
};

struct LoadOptions {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;  // weights; SSM decay/skip parameters stay fp32
};

// SSM decay/skip parameters (A_log, dt_bias, D) are fp32 in every dtype a model is loaded or
// saved in.
bool stays_fp32_tensor(const std::string& name);

// Casts/moves checkpoint tensors for a model: floating tensors to options.dtype except the SSM
// parameters that must stay fp32 (A_log, dt_bias, D), on options.device.
TensorMap prepare_weights(const TensorMap& weights, const LoadOptions& options);

// Builds the mixer of layer `layer` for its pattern symbol. Weights are full names. Attention
// layers use `rope` (one per model, so the angles are computed once per forward) or their own.
std::unique_ptr<Mixer> make_mixer(const io::ModelConfig& config, const TensorMap& weights, int64_t layer,
                                  std::shared_ptr<const Rope> rope = nullptr);

class HybridModel {
 public:
  // `weights` already prepared (device/dtype); shapes are checked against the config.
  HybridModel(io::ModelConfig config, const TensorMap& weights);

  const io::ModelConfig& config() const { return config_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  Mixer& mixer(int64_t layer) { return *layers_.at(layer).mixer; }
  const FeedForward& feed_forward(int64_t layer) const { return *layers_.at(layer).feed_forward; }
  at::Device device() const { return embed_tokens_.device(); }

  // max_tokens > 0: the KV caches are allocated once for that many tokens (prompt + new).
  ModelCache make_cache(int64_t batch, int64_t max_tokens = 0) const;
  // Switches a prefilled cache (length >= 1) to static mode for up to max_tokens tokens in all:
  // KV caches become fixed slots written at a device-side position, so a decode step launches
  // the same kernels on the same memory every time and can be captured as a CUDA graph. Then
  // forward() takes one token per sequence per call.
  void make_static(ModelCache& cache, int64_t max_tokens) const;
  // Throws a UserError when a host tensor of ids holds one outside [0, vocab); device tensors are
  // not read (that would wait for the device).
  void check_token_ids(const at::Tensor& input_ids) const;

  // input_ids [B,T] (int64) -> logits [B,T,vocab] (in the weights' dtype). With a cache, continues
  // from it and advances it. If layer_outputs is given, it receives each layer's output hidden
  // state [B,T,d] (for alignment training).
  at::Tensor forward(const at::Tensor& input_ids, ModelCache* cache = nullptr,
                     std::vector<at::Tensor>* layer_outputs = nullptr);
  at::Tensor forward(const at::Tensor& input_ids, ModelCache* cache, const ForwardOptions& options);
  // One decoder layer: hidden [B,T,d] (the layer's input) -> the layer's output.
  at::Tensor forward_layer(int64_t layer, const at::Tensor& hidden, LayerCache* cache = nullptr,
                           LayerTrace* trace = nullptr, const Documents* documents = nullptr);
  // Final norm, then lm_head: hidden [.., d] -> logits.
  at::Tensor final_norm(const at::Tensor& hidden) const;
  const at::Tensor& lm_head() const { return lm_head_; }
  // The tensors the model was built from, by checkpoint name (the model holds these very
  // tensors: a trained one updated in place is what the next forward uses).
  const TensorMap& weights() const { return weights_; }

 private:
  // forward_layer on hidden + pending without forming that sum or the layer's output: pending is the
  // layer before's feed-forward output (undefined: none), added by the fused add + norm kernel that
  // also computes this layer's input norm. Returns {hidden + pending + the mixer's output, this
  // layer's feed-forward output}: their sum is the layer's output (the next layer's pending add).
  // A trace (pending undefined) also gets that output.
  std::pair<at::Tensor, at::Tensor> layer_parts(int64_t layer, const at::Tensor& hidden, const at::Tensor& pending,
                                                LayerCache* cache, const Documents* documents,
                                                LayerTrace* trace = nullptr);
  struct Layer {
    at::Tensor input_norm, post_attention_norm;
    std::unique_ptr<Mixer> mixer;
    std::unique_ptr<FeedForward> feed_forward;
  };
  io::ModelConfig config_;
  TensorMap weights_;
  at::Tensor embed_tokens_, final_norm_, lm_head_;
  std::vector<Layer> layers_;
};

}  // namespace prime::model
