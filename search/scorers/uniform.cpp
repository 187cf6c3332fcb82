// uniform: the zero-cost baseline of prime-convert's default placement. Scores reproduce
// --placement uniform at the first --ratios ratio through --scores: its layers score 0, the
// others 1 + their distance to the nearest of them. (Uniform placements at different ratios are
// not nested, so the per-ratio report places each ratio itself.)
#include "convert/plan.h"
#include "search/scorers/ratio_report.h"
#include "search/scorers/scorer.h"

namespace prime::search {

ScorerResult score_uniform(const ScoringContext& context) {
  const int64_t layers = context.num_layers;
  const auto ratio = convert::parse_ratio(context.settings.ratios.at(0));
  ScorerResult result;
  result.scores = placement_scores(layers, convert::uniform_placement(layers, convert::attention_layer_count(layers, ratio)));
  result.cost_unit = "none (placement)";
  result.detail = "uniform placement at " + ratio.text();
  return result;
}

}  // namespace prime::search
