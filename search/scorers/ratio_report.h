// Choosing a ratio: per attention:SSM ratio, the layers a score table keeps as attention (the
// lowest-scoring, as prime-convert --scores picks them) and the predicted NLL increase of the
// hybrid, calibrated on the scorer's own measurement: the increase it measured with every layer
// replaced, times the replaced layers' share of the per-layer cost. Exact at both ends (nothing
// replaced: 0; everything: the measurement); in between, additive in the layers' costs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace prime::search {

// Scores that make `kept` the lowest: 0 for kept layers, 1 + distance to the nearest kept one
// for the rest.
std::vector<double> placement_scores(int64_t num_layers, const std::vector<int64_t>& kept);

// The baselines' scores: placement_scores of `placement` ("uniform" | "middle") at `ratio`;
// `detail` receives a one-line description.
std::vector<double> placement_baseline(int64_t num_layers, const std::string& ratio, const std::string& placement,
                                       std::string* detail);

struct RatioChoice {
  std::string ratio;
  std::vector<int64_t> kept;         // attention layers, sorted
  std::optional<double> predicted;   // NLL increase (nats/token); absent without a calibration
};

// cost may be empty (baselines): then no prediction. `placement` = "uniform" | "middle" places each
// ratio with that placement instead of the scores (the baselines' own rule).
std::vector<RatioChoice> choose_ratios(const std::vector<double>& scores, const std::vector<double>& cost,
                                       std::optional<double> total_increase, const std::vector<std::string>& ratios,
                                       const std::string& placement = "");

// total * sum(cost of replaced) / sum(cost), with negative costs (noise) counted as 0; an
// all-zero cost spreads the total evenly.
double predicted_increase(const std::vector<double>& cost, double total, const std::vector<int64_t>& kept);

}  // namespace prime::search
