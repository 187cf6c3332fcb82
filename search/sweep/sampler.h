// Which parameter combinations a sweep runs: every combination of the space's lists (grid), or
// `trials` seeded draws (random: lists uniformly, ranges uniformly or log-uniformly). The same
// spec always gives the same trials, in the same order.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "search/sweep/spec.h"
#include "store/store.h"

namespace prime::search {

// One trial's values, in the space's (key) order.
using ParamSet = std::vector<std::pair<std::string, nlohmann::json>>;

// grid: the first parameter (by name) varies slowest. UserError for a grid of more than 100,000
// trials (likely a mistake; use the random sampler).
std::vector<ParamSet> sample_trials(const SweepSpec& spec);

// As the store keeps them: strings as they are ("categorical"), integers ("int") and reals
// ("float") as round-trippable text, booleans as true/false ("categorical").
std::vector<store::TrialParam> to_trial_params(const ParamSet& params);
// Back from the store: the value a spec would hold.
nlohmann::json param_json(const store::TrialParam& param);

}  // namespace prime::search
