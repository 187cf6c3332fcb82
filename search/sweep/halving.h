// Successive halving without a barrier (asynchronous, as ASHA): each trial, on reaching a rung,
// is compared with every trial that reached the same rung before it, and goes on only when it is
// among the best 1/eta of them. With several metrics, "best" is the Pareto rank (non-dominated
// sorting) of their values, which is how multi-objective studies can prune at all.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "search/sweep/spec.h"
#include "store/store.h"

namespace prime::search {

// Training tokens at rung k: min_tokens × eta^k.
int64_t rung_tokens(const EarlyStopping& rule, int rung);
// The highest rung at or below `tokens` (-1: none yet).
int rung_at(const EarlyStopping& rule, int64_t tokens);

// values[i]: trial i's metric values at the rung (one per direction; NaN = missing, which ranks
// last); `self` is the trial deciding. It goes on when fewer than min_trials trials have reached
// the rung, or when fewer than ceil(n / eta) trials have a strictly better Pareto rank than it
// (ties are kept: equal trials stand or fall together).
bool keep_at_rung(const std::vector<std::vector<double>>& values, const std::vector<store::Direction>& directions,
                  size_t self, int64_t eta, int64_t min_trials);

}  // namespace prime::search
