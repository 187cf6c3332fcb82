// Pareto fronts by a lexicographic sweep (a point's dominators all sort before it, and checking
// the front found so far suffices by transitivity), ranks by peeling fronts, hypervolume by
// sweeping in 2-D and slicing in 3-D.
#include "store/pareto.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "util/error.h"

namespace prime::store {
namespace {

// Every objective as minimised; nullopt rows for points with a missing value.
std::vector<std::vector<double>> as_minimised(const std::vector<std::vector<double>>& points,
                                              const std::vector<Direction>& directions, std::vector<bool>& complete) {
  std::vector<std::vector<double>> out(points.size());
  complete.assign(points.size(), true);
  for (size_t i = 0; i < points.size(); ++i) {
    if (points[i].size() != directions.size())
      throw user_error("a point has ", points[i].size(), " values for ", directions.size(), " objectives");
    out[i] = points[i];
    for (size_t k = 0; k < directions.size(); ++k) {
      if (std::isnan(out[i][k])) complete[i] = false;
      if (directions[k] == Direction::Maximize) out[i][k] = -out[i][k];
    }
  }
  return out;
}

bool dominates(const std::vector<double>& a, const std::vector<double>& b) {
  bool strictly = false;
  for (size_t k = 0; k < a.size(); ++k) {
    if (a[k] > b[k]) return false;
    if (a[k] < b[k]) strictly = true;
  }
  return strictly;
}

// The non-dominated members of `candidates` (indices into minimised points).
std::vector<size_t> front_of(const std::vector<std::vector<double>>& points, std::vector<size_t> candidates) {
  std::sort(candidates.begin(), candidates.end(),
            [&](size_t a, size_t b) { return points[a] < points[b] || (points[a] == points[b] && a < b); });
  std::vector<size_t> front;
  for (size_t candidate : candidates) {
    const bool dominated = std::any_of(front.begin(), front.end(),
                                       [&](size_t member) { return dominates(points[member], points[candidate]); });
    if (!dominated) front.push_back(candidate);
  }
  std::sort(front.begin(), front.end());
  return front;
}

// Area dominated by minimised 2-D points below reference (r0, r1); points must beat it.
double area_2d(std::vector<std::pair<double, double>> points, double r0, double r1) {
  std::sort(points.begin(), points.end());
  double area = 0, best_y = r1;
  for (const auto& [x, y] : points) {
    if (y >= best_y) continue;
    area += (r0 - x) * (best_y - y);
    best_y = y;
  }
  return area;
}

}  // namespace

std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& points,
                                 const std::vector<Direction>& directions) {
  std::vector<bool> complete;
  const auto minimised = as_minimised(points, directions, complete);
  std::vector<size_t> candidates;
  for (size_t i = 0; i < points.size(); ++i)
    if (complete[i]) candidates.push_back(i);
  return front_of(minimised, candidates);
}

std::vector<int> pareto_ranks(const std::vector<std::vector<double>>& points, const std::vector<Direction>& directions) {
  std::vector<bool> complete;
  const auto minimised = as_minimised(points, directions, complete);
  std::vector<int> ranks(points.size(), -1);
  std::vector<size_t> remaining;
  for (size_t i = 0; i < points.size(); ++i)
    if (complete[i]) remaining.push_back(i);
  int rank = 0;
  while (!remaining.empty()) {
    const std::vector<size_t> front = front_of(minimised, remaining);
    for (size_t member : front) ranks[member] = rank;
    std::vector<size_t> rest;
    std::set_difference(remaining.begin(), remaining.end(), front.begin(), front.end(), std::back_inserter(rest));
    remaining = std::move(rest);
    ++rank;
  }
  for (size_t i = 0; i < points.size(); ++i)
    if (!complete[i]) ranks[i] = rank;
  return ranks;
}

double hypervolume(const std::vector<std::vector<double>>& points, const std::vector<Direction>& directions,
                   const std::vector<double>& reference) {
  if (directions.empty() || directions.size() > 3)
    throw user_error("hypervolume needs 1 to 3 objectives, not ", directions.size());
  if (reference.size() != directions.size())
    throw user_error("the reference point has ", reference.size(), " values for ", directions.size(), " objectives");
  std::vector<bool> complete;
  const auto minimised = as_minimised(points, directions, complete);
  std::vector<bool> reference_complete;
  const auto ref = as_minimised({reference}, directions, reference_complete)[0];
  std::vector<std::vector<double>> inside;
  for (size_t i = 0; i < minimised.size(); ++i) {
    bool beats = !std::any_of(minimised[i].begin(), minimised[i].end(), [](double v) { return std::isnan(v); });
    for (size_t k = 0; beats && k < ref.size(); ++k) beats = minimised[i][k] < ref[k];
    if (beats) inside.push_back(minimised[i]);
  }
  if (inside.empty()) return 0;
  if (ref.size() == 1) {
    double best = inside[0][0];
    for (const auto& p : inside) best = std::min(best, p[0]);
    return ref[0] - best;
  }
  if (ref.size() == 2) {
    std::vector<std::pair<double, double>> xy;
    for (const auto& p : inside) xy.emplace_back(p[0], p[1]);
    return area_2d(std::move(xy), ref[0], ref[1]);
  }
  // 3-D: between consecutive z levels the dominated slice is the 2-D area of the points at or
  // below that level.
  std::sort(inside.begin(), inside.end(), [](const auto& a, const auto& b) { return a[2] < b[2]; });
  double volume = 0;
  std::vector<std::pair<double, double>> below;
  for (size_t i = 0; i < inside.size(); ++i) {
    below.emplace_back(inside[i][0], inside[i][1]);
    const double next_z = i + 1 < inside.size() ? inside[i + 1][2] : ref[2];
    if (next_z > inside[i][2]) volume += area_2d(below, ref[0], ref[1]) * (next_z - inside[i][2]);
  }
  return volume;
}

}  // namespace prime::store
