// linearization-error: every layer's SSM (the --layer type) initialised from its attention as
// prime-convert does; per layer, the normalised MSE of the SSM's output against the attention
// output on the same inputs (the teacher's own input to that layer). Zero-shot by default; with
// --align-steps N, after N layer-local alignment steps (all layers at once: each layer's loss
// depends only on its own mixer, so one step is N independent ones). A layer its SSM reproduces
// well is safe to replace. Calibration: the NLL increase of the all-SSM student as scored.
#include "search/scorers/local_training.h"
#include "search/scorers/scorer.h"
#include "search/scorers/scoring_passes.h"

namespace prime::search {

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
  result.total_increase = student_loss(run, context).nll_increase;
  result.detail = context.settings.align_steps > 0
                      ? std::to_string(context.settings.align_steps) + " layer-local alignment steps (" +
                            context.settings.layer + ", lr " + std::to_string(context.settings.lr) + "), then 1 traced pass"
                      : "zero-shot " + context.settings.layer + " from each attention layer, 1 traced pass";
  return result;
}

}  // namespace prime::search
