// linearization-error: every layer's SSM (the --layer type) initialised from its attention as
// prime-convert does; per layer, the normalised MSE of the SSM's output against the attention
// output on the same inputs (the teacher's own input to that layer). Zero-shot by default; with
// --align-steps N, after N layer-local alignment steps (all layers at once: each layer's loss
// depends only on its own mixer, so one step is N independent ones). A layer its SSM reproduces
// well is safe to replace. Calibration: the NLL increase of the all-SSM student as scored.
//
// The error is local: it says how well the SSM imitates the layer, not how much the rest of the
// network amplifies what it gets wrong (on the layer-selection study's teacher the first layer
// was the easiest to imitate and the one the hybrids needed most: experiments/layer_selection).
// So each layer's error carried to the output is reported too (kl_alone: KL of the teacher
// against the teacher with that layer alone swapped for its SSM; L passes from the layer on).
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "search/scorers/local_training.h"
#include "search/scorers/scorer.h"
#include "search/scorers/scoring_passes.h"

namespace prime::search {
namespace {

// Per replaced layer, KL(teacher || the teacher with only that layer's mixer the student's SSM),
// nats/token over the scoring batches; the layers before it are the teacher's, so each is a
// pass from the swapped layer on. NaN for layers the student keeps.
std::vector<double> swapped_alone_kl(train::RunModels& run, const ScoringContext& context) {
  at::NoGradGuard no_grad;
  std::vector<double> kl(context.num_layers, std::nan(""));
  for (int64_t layer : run.replaced_layers) kl[layer] = 0;
  int64_t tokens = 0;
  for (const at::Tensor& ids : context.inputs) {
    TracedPass pass = traced_teacher_pass(*run.teacher, ids);
    for (int64_t layer : run.replaced_layers) {
      // The student's layer is the teacher's (norms, MLP) around the SSM mixer.
      const at::Tensor swapped = run.student->forward_layer(layer, pass.trace.traced.at(layer).layer_input);
      kl[layer] += token_kl(pass.logits, logits_from_layer(*run.teacher, layer + 1, swapped)).sum().item<double>();
    }
    tokens += ids.numel();
  }
  for (double& value : kl) value /= static_cast<double>(tokens);
  return kl;
}

}  // namespace

ScorerResult score_linearization_error(const ScoringContext& context) {
  train::RunModels run = build_student(context, replaced_pattern(context));
  align_layer_local(run, context, context.settings.align_steps);
  const std::vector<double> errors = mixer_errors(run, context);
  ScorerResult result;
  result.cost_unit = "normalised MSE of the " + context.settings.layer + " output";
  for (double error : errors) {
    result.cost.push_back(error);
    result.scores.push_back(-error);
  }
  result.columns.push_back({"kl_alone", swapped_alone_kl(run, context)});
  result.total_increase = student_loss(run, context).nll_increase;
  result.detail = context.settings.align_steps > 0
                      ? std::to_string(context.settings.align_steps) + " layer-local alignment steps (" +
                            context.settings.layer + ", lr " + std::to_string(context.settings.lr) + "), then 1 traced pass"
                      : "zero-shot " + context.settings.layer + " from each attention layer, 1 traced pass";
  result.detail += " + " + std::to_string(context.num_layers) + " single-layer swapped passes (kl_alone)";
  return result;
}

}  // namespace prime::search
