// Resolving --source / --model: a checkpoint directory, a known-model alias found in the Hugging
// Face cache, or synthetic:ALIAS[@key=value,...] (that alias's exact config with seeded random
// weights, optionally shrunk for tests).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "io/model_config.h"

namespace prime::io {

struct Source {
  std::string spec;            // as the user wrote it
  std::string kind;            // "directory", "alias" (resolved in the HF cache) or "synthetic"
  std::filesystem::path dir;   // checkpoint directory; empty for synthetic sources
  std::string alias;           // known-model alias, when there is one
  std::string hf_id;           // Hugging Face id, when known
  std::string revision;        // HF cache snapshot revision, when resolved from the cache
  uint64_t seed = 0;           // synthetic weights' seed
  ModelConfig config;
};

struct KnownModel {
  std::string alias, hf_id, family;
  nlohmann::json config;
};

// templates/models/*.json, keyed by alias.
const std::map<std::string, KnownModel>& known_models();

// The Hugging Face hub cache root: $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub.
std::filesystem::path hf_hub_cache();

// UserError with a clear message (and, for a known alias missing from the cache, the download
// command) when the source cannot be resolved. Besides directories, aliases and synthetic:...,
// a Hugging Face id ("Qwen/Qwen3-0.6B") is a source when that model is in the HF cache.
Source resolve_source(const std::string& spec);

// The dtype of a synthetic source's weights: its config's torch_dtype (dtype in transformers 5),
// fp32 when absent. A synthetic source stands for the checkpoint its config describes, so every
// command (inspect, eval, convert) sees the same dtype and bytes.
at::ScalarType synthetic_dtype(const ModelConfig& config);

// What a source's weights weigh, from headers only (nothing is read): parameters, bytes as
// stored, and the dtype holding most floating-point bytes (the checkpoint's dtype).
struct WeightsSummary {
  uint64_t parameters = 0;
  uint64_t bytes = 0;
  at::ScalarType dtype = at::kFloat;
};
WeightsSummary summarize_weights(const Source& source);

// name -> tensor: zero-copy views of the checkpoint's tensors, or seeded random weights for a
// synthetic source (the exact tensor set a checkpoint of that config would have).
std::map<std::string, at::Tensor> load_source_weights(const Source& source);

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};
// The tensors a Transformer checkpoint of this config holds (attention layers only).
std::vector<TensorSpec> transformer_tensor_specs(const ModelConfig& config);

class Checkpoint;
// The one check, shared by every command, that a checkpoint holds what its config.json implies:
// every tensor of an attention-only (Transformer) checkpoint is present with the implied shape;
// in a hybrid, the tensors of its attention layers that are present have that shape. UserError
// naming the tensor, its shape and the implied one.
void check_weights_match_config(const ModelConfig& config, const Checkpoint& checkpoint);

}  // namespace prime::io
