// middle: the zero-cost baseline of --placement middle (a contiguous block of attention layers
// centred on the stack, where a hybrid-architecture study finds attention works best), as
// uniform.cpp reproduces uniform.
#include "search/scorers/ratio_report.h"
#include "search/scorers/scorer.h"

namespace prime::search {

ScorerResult score_middle(const ScoringContext& context) {
  ScorerResult result;
  result.scores = placement_baseline(context.num_layers, context.settings.ratios.at(0), "middle", &result.detail);
  result.cost_unit = "none (placement)";
  return result;
}

}  // namespace prime::search
