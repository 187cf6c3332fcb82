#include "search/scorers/local_training.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>

#include "io/model_config.h"
#include "search/scorers/scoring_passes.h"
#include "train/adamw.h"
#include "train/losses.h"
#include "util/error.h"

namespace prime::search {
namespace {

// Global-norm gradient clipping at 1 (as prime-train's default), so a few large early steps do
// not throw a layer's alignment off.
void clip_gradients(const std::vector<train::TrainedParameter>& parameters) {
  double squares = 0;
  for (const auto& parameter : parameters)
    if (parameter.tensor.grad().defined()) squares += parameter.tensor.grad().pow(2).sum().item<double>();
  const double norm = std::sqrt(squares);
  if (norm > 1.0)
    for (const auto& parameter : parameters)
      if (parameter.tensor.grad().defined()) parameter.tensor.grad().mul_(1.0 / norm);
}

// Runs `steps` optimiser steps of `loss_of(batch ids)` over the train batches.
template <typename LossFn>
void train_steps(train::RunModels& run, const ScoringContext& context, int64_t steps, const std::string& label,
                 LossFn loss_of) {
  if (steps <= 0) return;
  if (context.train_inputs.empty()) throw internal_error("no training batches for ", label);
  train::AdamW optimizer(run.trained, train::AdamWOptions{});
  for (int64_t step = 0; step < steps; ++step) {
    const at::Tensor& ids = context.train_inputs[static_cast<size_t>(step) % context.train_inputs.size()];
    optimizer.zero_grad();
    at::Tensor loss = loss_of(ids);
    if (!std::isfinite(loss.item<double>())) throw user_error(label, ": the loss is not finite at step ", step + 1, "; lower --lr");
    loss.backward();
    clip_gradients(run.trained);
    // Cosine decay to 10%: short runs settle instead of ending on a full-size step.
    const double progress = static_cast<double>(step) / static_cast<double>(steps);
    optimizer.step(context.settings.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * progress))));
  }
}

}  // namespace

std::vector<std::string> replaced_pattern(const ScoringContext& context, int64_t keep) {
  std::vector<std::string> pattern(context.num_layers, context.settings.layer);
  if (keep >= 0) pattern.at(keep) = "*";
  return pattern;
}

train::RunModels build_student(const ScoringContext& context, const std::vector<std::string>& pattern) {
  train::ModelSetup setup;
  setup.student_spec = context.source + "+convert:pattern=" + io::join_layer_pattern(pattern);
  setup.teacher_spec = context.source;
  setup.groups = {train::ParamGroup::Ssm};
  setup.device = context.device;
  setup.dtype = at::kFloat;
  return train::build_run_models(setup);
}

void align_layer_local(train::RunModels& run, const ScoringContext& context, int64_t steps) {
  train_steps(run, context, steps, "layer-local alignment", [&](const at::Tensor& ids) {
    model::ForwardTrace trace;
    trace.layers = run.replaced_layers;
    {
      at::NoGradGuard no_grad;
      model::ForwardOptions options;
      options.trace = &trace;
      options.return_hidden = true;
      run.teacher->forward(ids, nullptr, options);
    }
    at::Tensor loss = at::zeros({}, at::TensorOptions().device(context.device));
    for (int64_t layer : run.replaced_layers) {
      const model::LayerTrace& seen = trace.traced.at(layer);
      loss = loss + train::normalized_mse(run.student->mixer(layer).forward(seen.mixer_input, nullptr),
                                          seen.mixer_output);
    }
    return loss;
  });
}

void distill(train::RunModels& run, const ScoringContext& context, int64_t steps) {
  const int64_t vocab = run.student->config().vocab_size;
  train::LmLossOptions lm;
  lm.kl_weight = 1;
  lm.chunk_tokens = std::max<int64_t>(1, (context.device.is_cuda() ? (int64_t{128} << 20) : (int64_t{4} << 20)) / vocab);
  train_steps(run, context, steps, "distillation", [&](const at::Tensor& ids) {
    model::ForwardOptions options;
    options.return_hidden = true;
    at::Tensor teacher_hidden;
    {
      at::NoGradGuard no_grad;
      teacher_hidden = run.teacher->forward(ids, nullptr, options);
    }
    const at::Tensor hidden = run.student->forward(ids, nullptr, options);
    const int64_t d = hidden.size(-1);
    return train::chunked_lm_loss(hidden.reshape({-1, d}), run.student->lm_head(), teacher_hidden.reshape({-1, d}),
                                  run.teacher->lm_head(), {}, lm);
  });
}

std::vector<double> mixer_errors(train::RunModels& run, const ScoringContext& context) {
  at::NoGradGuard no_grad;
  std::vector<double> errors(context.num_layers, 0.0);
  for (const at::Tensor& ids : context.inputs) {
    TracedPass pass = traced_teacher_pass(*run.teacher, ids);
    for (int64_t layer : run.replaced_layers) {
      const model::LayerTrace& seen = pass.trace.traced.at(layer);
      errors[layer] += train::normalized_mse(run.student->mixer(layer).forward(seen.mixer_input, nullptr),
                                             seen.mixer_output)
                           .item<double>();
    }
  }
  for (double& error : errors) error /= static_cast<double>(context.inputs.size());
  std::vector<double> result(context.num_layers, std::nan(""));
  for (int64_t layer : run.replaced_layers) result[layer] = errors[layer];
  return result;
}

StudentLoss student_loss(train::RunModels& run, const ScoringContext& context) {
  at::NoGradGuard no_grad;
  double kl = 0, nll = 0;
  int64_t tokens = 0;
  for (size_t b = 0; b < context.inputs.size(); ++b) {
    const at::Tensor teacher_logits = run.teacher->forward(context.inputs[b]);
    const at::Tensor student_logits = run.student->forward(context.inputs[b]);
    kl += token_kl(teacher_logits, student_logits).sum().item<double>();
    nll += (token_nll(student_logits, context.targets[b]) - token_nll(teacher_logits, context.targets[b]))
               .sum()
               .item<double>();
    tokens += context.targets[b].numel();
  }
  return {kl / static_cast<double>(tokens), nll / static_cast<double>(tokens)};
}

model::TensorMap trained_snapshot(const train::RunModels& run) {
  model::TensorMap snapshot;
  for (const auto& parameter : run.trained) snapshot[parameter.name] = parameter.tensor.detach().clone();
  return snapshot;
}

void load_trained(train::RunModels& run, const model::TensorMap& snapshot) {
  at::NoGradGuard no_grad;
  for (const auto& parameter : run.trained) {
    auto found = snapshot.find(parameter.name);
    if (found != snapshot.end()) parameter.tensor.copy_(found->second);
  }
}

}  // namespace prime::search
