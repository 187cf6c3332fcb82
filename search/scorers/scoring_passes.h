// What the scorers share: per-token NLL and KL, a pass of the teacher that keeps every
// layer's input, the rest of a model from one layer on, and the teacher with some of its layers
// switched to a sliding window (the same weights: no copy).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "model/hybrid_model.h"
#include "search/scorers/scorer.h"

namespace prime::search {

// logits [b, T, V], targets [b, T] -> NLL per token [b, T] (fp32).
at::Tensor token_nll(const at::Tensor& logits, const at::Tensor& targets);
// KL(p || q) per token [b, T] (fp32) from the logits of p and q.
at::Tensor token_kl(const at::Tensor& p_logits, const at::Tensor& q_logits);

// The teacher's logits for one batch, with every layer traced.
struct TracedPass {
  at::Tensor logits;
  model::ForwardTrace trace;
};
TracedPass traced_teacher_pass(model::HybridModel& teacher, const at::Tensor& ids);

// Layers first..L-1 of `model` from `hidden` (the input of layer `first`), then the head: logits.
at::Tensor logits_from_layer(model::HybridModel& model, int64_t first, at::Tensor hidden);

// The teacher with `layers` attending only to the last `window` tokens; it holds the teacher's
// own tensors.
std::unique_ptr<model::HybridModel> windowed_model(const model::HybridModel& teacher,
                                                   const std::vector<int64_t>& layers, int64_t window);

// Mean NLL per token over the context's scoring batches of `model` (no autograd).
double mean_nll(model::HybridModel& model, const ScoringContext& context);

// NLL increase (nats/token, every scored token) of the teacher with every layer windowed.
double all_windowed_increase(const ScoringContext& context);

// Writes "label: done/total" progress to the context's log.
void log_progress(const ScoringContext& context, const std::string& label, int64_t done, int64_t total);

// Per-layer values put on a common scale, for scores that add terms of different units:
// (value - mean) / spread with spread = max(population standard deviation, min_spread); all 0
// when the spread is 0 (a term that is the same for every layer says nothing).
std::vector<double> standardized(const std::vector<double>& values, double min_spread);

// The positions beyond the window: [1, T] mask of positions t >= window (their context is longer
// than the window, so a windowed layer sees less of it).
at::Tensor beyond_window_mask(int64_t steps, int64_t window, const at::Device& device);

}  // namespace prime::search
