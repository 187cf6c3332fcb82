// kl-restore, the expensive ground truth (KL-guided selection): an all-SSM student aligned for a
// short while (layer-local, --restore-align-steps), then for each layer: that layer alone
// restored to the teacher's attention, a short KL distillation (--restore-steps) from the aligned
// state, and the KL to the teacher on the scoring sequences. A layer's cost is how much restoring
// it lowers the KL against the all-SSM student distilled the same way: L + 1 short
// distillations. Calibration: the NLL increase of that distilled all-SSM student.
#include <cmath>

#include "search/scorers/local_training.h"
#include "search/scorers/scorer.h"
#include "search/scorers/scoring_passes.h"

namespace prime::search {

ScorerResult score_kl_restore(const ScoringContext& context) {
  const ScorerSettings& settings = context.settings;
  model::TensorMap aligned;
  StudentLoss all_ssm;
  {
    train::RunModels run = build_student(context, replaced_pattern(context));
    align_layer_local(run, context, settings.restore_align_steps);
    aligned = trained_snapshot(run);
    distill(run, context, settings.restore_steps);
    all_ssm = student_loss(run, context);
  }
  ScorerResult result;
  result.cost_unit = "KL drop when restored (nats/token)";
  std::vector<double> restored_kl;
  for (int64_t layer = 0; layer < context.num_layers; ++layer) {
    train::RunModels run = build_student(context, replaced_pattern(context, layer));
    load_trained(run, aligned);
    distill(run, context, settings.restore_steps);
    const double kl = student_loss(run, context).kl;
    restored_kl.push_back(kl);
    result.cost.push_back(all_ssm.kl - kl);
    result.scores.push_back(kl - all_ssm.kl);
    log_progress(context, "kl-restore layers", layer + 1, context.num_layers);
  }
  result.columns.push_back({"kl_restored", restored_kl});
  result.total_increase = all_ssm.nll_increase;
  result.detail = "all-" + settings.layer + " student: " + std::to_string(settings.restore_align_steps) +
                  " layer-local alignment steps; " + std::to_string(context.num_layers + 1) + " distillations of " +
                  std::to_string(settings.restore_steps) + " steps; all-SSM KL " + std::to_string(all_ssm.kl);
  return result;
}

}  // namespace prime::search
