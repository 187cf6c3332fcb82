// Pareto fronts, non-dominated ranks and hypervolume over a study's objective values: what
// `prime-db pareto` prints and what multi-objective successive halving ranks trials by.
#pragma once

#include <cstddef>
#include <vector>

#include "store/store.h"

namespace prime::store {

// points[i] holds one value per direction; NaN = missing. A point with a missing value is on no
// front and dominates nothing. Equal points do not dominate each other (duplicates share a
// front). Indices of the non-dominated points, ascending.
std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& points,
                                 const std::vector<Direction>& directions);

// Non-dominated sorting: 0 for the front, 1 for the front once it is removed, ...; points with
// a missing value get (the largest rank of the others) + 1.
std::vector<int> pareto_ranks(const std::vector<std::vector<double>>& points,
                              const std::vector<Direction>& directions);

// The volume (area for 2 objectives) dominated by the points and bounded by `reference`, which
// every counted point must beat in each objective (points that do not, or have a missing value,
// add nothing). 1 to 3 objectives; UserError for more or for a size mismatch.
double hypervolume(const std::vector<std::vector<double>>& points, const std::vector<Direction>& directions,
                   const std::vector<double>& reference);

}  // namespace prime::store
