// middle: the zero-cost baseline of --placement middle (a contiguous block of attention layers
// centred on the stack, where a hybrid-architecture study finds attention works best). Scores
// reproduce it at the first --ratios ratio through --scores, as uniform's do.
#include "convert/plan.h"
#include "search/scorers/ratio_report.h"
#include "search/scorers/scorer.h"

namespace prime::search {

ScorerResult score_middle(const ScoringContext& context) {
  const int64_t layers = context.num_layers;
  const auto ratio = convert::parse_ratio(context.settings.ratios.at(0));
  ScorerResult result;
  result.scores = placement_scores(layers, convert::middle_placement(layers, convert::attention_layer_count(layers, ratio)));
  result.cost_unit = "none (placement)";
  result.detail = "middle placement at " + ratio.text();
  return result;
}

}  // namespace prime::search
