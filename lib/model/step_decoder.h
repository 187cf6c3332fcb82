// Decode steps at one token per sequence on a static cache (HybridModel::make_static). On a CUDA
// device the step is captured once as a CUDA graph and then replayed: one launch per step instead
// of thousands of host-dispatched ops. Elsewhere, and for models whose step must wait for the
// host (MoE layers whose experts run one by one: graph_blocker says why), the same static step
// runs eagerly.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "model/hybrid_model.h"

namespace prime::model {

class StepDecoder {
 public:
  // `cache` holds the prefilled prompt (length >= 1) and is switched to static mode for up to
  // max_tokens tokens in all. allow_graph = false keeps every step eager (for comparisons).
  StepDecoder(HybridModel& model, ModelCache& cache, int64_t max_tokens, bool allow_graph = true);
  ~StepDecoder();
  StepDecoder(const StepDecoder&) = delete;
  StepDecoder& operator=(const StepDecoder&) = delete;

  // ids [B] (int64, any device) of the tokens at position length() -> logits [B, vocab] for the
  // next one. With a graph, the returned tensor is the graph's output: the next step overwrites it.
  at::Tensor step(const at::Tensor& ids);

  bool uses_graph() const { return use_graph_; }
  int64_t length() const { return cache_.length(); }
  // Why a model's step cannot be captured ("" when it can), whatever the device.
  static std::string graph_blocker(const HybridModel& model);
  // Whether a decoder with allow_graph would capture this model's step here (CUDA build, CUDA
  // device, no blocker).
  static bool graph_possible(const HybridModel& model);

 private:
  struct Graph;  // the CUDA graph and its stream, defined where CUDA is built
  HybridModel& model_;
  ModelCache& cache_;
  int64_t max_tokens_;
  bool use_graph_ = false;
  int64_t steps_ = 0;
  at::Tensor ids_;     // [B, 1] int64 on the model's device: the step's input, refilled in place
  at::Tensor logits_;  // the captured step's output
  std::unique_ptr<Graph> graph_;
};

}  // namespace prime::model
