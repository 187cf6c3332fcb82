// A conversion, fully decided before anything is written: the source and its validated tensors,
// the per-layer types, the output config, and every output tensor with its dtype, shape and
// recipe. --dry-run prints it; convert::write_hybrid carries it out.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "convert/plan.h"
#include "convert/source_weights.h"
#include "convert/weight_map.h"
#include "io/model_config.h"
#include "io/source.h"

namespace prime::convert {

// Everything prime-convert takes.
struct ConvertOptions {
  std::string source;              // --source: directory, alias or synthetic:ALIAS[@...]
  PlanRequest layers;              // --layer, --ratio, --placement, --keep-attention, --pattern, --scores
  std::string init = "hmf";        // --init
  uint64_t seed = 0;               // --seed (random parts of the init)
  std::string dtype;               // --dtype: empty keeps every tensor's source dtype
  int64_t swa_window = 2048;       // --swa-window
  std::filesystem::path out;       // --out
  bool force = false;              // --force: replace an existing output directory
  uint64_t max_shard_bytes = 5000000000ull;
  std::string command_line;        // recorded in prime.json and README.md
};

struct ConversionPlan {
  io::Source source;
  std::shared_ptr<SourceWeights> weights;
  LayerPlan layers;
  InitRecipe init = InitRecipe::Hmf;
  uint64_t seed = 0;
  std::optional<at::ScalarType> dtype;   // --dtype
  int64_t swa_window = 2048;
  uint64_t max_shard_bytes = 5000000000ull;
  nlohmann::json config;                 // the output config.json
  io::ModelConfig hybrid;                // that config as the loaders parse it
  std::vector<TargetTensor> targets;     // output tensors, in layer order
  std::vector<int64_t> target_layers;    // each target's layer; -1 outside the layers
  std::vector<std::string> dropped;      // source tensors not carried over
  uint64_t read_bytes = 0, output_bytes = 0;
  int64_t shard_count = 0;
  uint64_t peak_bytes_estimate = 0;      // resident memory of the conversion, estimated
  std::string peak_step;                 // the output tensor that needs the most memory

  // The --dry-run text. every_tensor: also list each output tensor.
  std::string summary(bool every_tensor = false) const;
  // "hybrid_qwen3 (HybridQwen3ForCausalLM): 9 attention + 27 GKA; uniform, ratio 1:3 (...)".
  std::string plan_target_line() const;
};

// Resolves the source, validates its tensors (names, shapes, floating dtypes) and the
// flags, and decides every output tensor. Reads headers only. UserError on any bad input.
ConversionPlan plan_conversion(const ConvertOptions& options);

// "1.23 GB" / "45.6 MB" (decimal units).
std::string format_bytes(uint64_t bytes);
// "bf16", "fp32", ...
std::string dtype_short_name(at::ScalarType dtype);

}  // namespace prime::convert
