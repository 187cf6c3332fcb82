// Greedy decoding with the per-layer cache: prefill the prompt once, then one token per step on a
// static cache (model::StepDecoder: a CUDA graph per step on a GPU).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "model/hybrid_model.h"

namespace prime::eval {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  std::vector<int64_t> stop_ids;  // a sequence stops after emitting one of these
  bool graph = true;              // replay the decode step as a CUDA graph where possible
  std::function<void(int64_t tokens_done)> progress;  // after each generated step
};

// prompt [B,P] int64 -> new tokens per sequence (at most max_new_tokens each).
std::vector<std::vector<int64_t>> greedy_generate(model::HybridModel& model, const at::Tensor& prompt,
                                                  const GenerateOptions& options);

}  // namespace prime::eval
