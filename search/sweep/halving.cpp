#include "search/sweep/halving.h"

#include <cmath>

#include "store/pareto.h"

namespace prime::search {

int64_t rung_tokens(const EarlyStopping& rule, int rung) {
  double tokens = static_cast<double>(rule.min_tokens);
  for (int k = 0; k < rung; ++k) tokens *= static_cast<double>(rule.eta);
  return static_cast<int64_t>(std::min(tokens, 9e18));
}

int rung_at(const EarlyStopping& rule, int64_t tokens) {
  int rung = -1;
  while (rung < 60 && rung_tokens(rule, rung + 1) <= tokens) ++rung;
  return rung;
}

bool keep_at_rung(const std::vector<std::vector<double>>& values, const std::vector<store::Direction>& directions,
                  size_t self, int64_t eta, int64_t min_trials) {
  const int64_t reached = static_cast<int64_t>(values.size());
  if (reached < min_trials) return true;
  const std::vector<int> ranks = store::pareto_ranks(values, directions);
  const int64_t kept = (reached + eta - 1) / eta;
  int64_t better = 0;
  for (size_t i = 0; i < values.size(); ++i)
    if (ranks[i] < ranks[self]) ++better;
  return better < kept;
}

}  // namespace prime::search
