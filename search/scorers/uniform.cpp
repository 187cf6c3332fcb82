// uniform: the zero-cost baseline of prime-convert's default placement. Scores reproduce
// --placement uniform at the first --ratios ratio through --scores (ratio_report.h,
// placement_baseline); uniform placements at different ratios are not nested, so the per-ratio
// report places each ratio itself.
#include "search/scorers/ratio_report.h"
#include "search/scorers/scorer.h"

namespace prime::search {

ScorerResult score_uniform(const ScoringContext& context) {
  ScorerResult result;
  result.scores = placement_baseline(context.num_layers, context.settings.ratios.at(0), "uniform", &result.detail);
  result.cost_unit = "none (placement)";
  return result;
}

}  // namespace prime::search
