#include "search/scorers/ratio_report.h"

#include <algorithm>
#include <cstdlib>

#include "convert/plan.h"

namespace prime::search {

std::vector<double> placement_scores(int64_t num_layers, const std::vector<int64_t>& kept) {
  std::vector<double> scores;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    int64_t nearest = num_layers;
    for (int64_t k : kept) nearest = std::min<int64_t>(nearest, std::llabs(layer - k));
    scores.push_back(nearest == 0 ? 0.0 : 1.0 + static_cast<double>(nearest));
  }
  return scores;
}

std::vector<double> placement_baseline(int64_t num_layers, const std::string& ratio_text, const std::string& placement,
                                       std::string* detail) {
  const convert::Ratio ratio = convert::parse_ratio(ratio_text);
  const int64_t count = convert::attention_layer_count(num_layers, ratio);
  *detail = placement + " placement at " + ratio.text();
  return placement_scores(num_layers, placement == "middle" ? convert::middle_placement(num_layers, count)
                                                            : convert::uniform_placement(num_layers, count));
}

double predicted_increase(const std::vector<double>& cost, double total, const std::vector<int64_t>& kept) {
  double all = 0, replaced = 0;
  int64_t replaced_count = 0;
  for (size_t layer = 0; layer < cost.size(); ++layer) {
    const double c = std::max(0.0, cost[layer]);
    all += c;
    if (!std::binary_search(kept.begin(), kept.end(), static_cast<int64_t>(layer))) {
      replaced += c;
      ++replaced_count;
    }
  }
  if (all <= 0) return total * static_cast<double>(replaced_count) / static_cast<double>(cost.size());
  return total * replaced / all;
}

std::vector<RatioChoice> choose_ratios(const std::vector<double>& scores, const std::vector<double>& cost,
                                       std::optional<double> total_increase, const std::vector<std::string>& ratios,
                                       const std::string& placement) {
  const int64_t layers = static_cast<int64_t>(scores.size());
  std::vector<RatioChoice> choices;
  for (const std::string& text : ratios) {
    const convert::Ratio ratio = convert::parse_ratio(text);
    const int64_t count = convert::attention_layer_count(layers, ratio);
    RatioChoice choice;
    choice.ratio = ratio.text();
    if (placement == "uniform") {
      choice.kept = convert::uniform_placement(layers, count);
    } else if (placement == "middle") {
      choice.kept = convert::middle_placement(layers, count);
    } else {
      convert::LayerScores table;
      table.scores = scores;
      choice.kept = convert::lowest_scoring_layers(table, count);
    }
    if (total_increase && !cost.empty()) choice.predicted = predicted_increase(cost, *total_increase, choice.kept);
    choices.push_back(choice);
  }
  return choices;
}

}  // namespace prime::search
