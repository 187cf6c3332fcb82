// Pareto fronts, ranks and hypervolume against brute force on random point sets with many
// ties and duplicates (values drawn from a few integers), missing values and mixed directions.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <random>

#include "store/pareto.h"
#include "util/error.h"

using namespace prime::store;

namespace {

// a dominates b: no worse in every objective, better in one (NaN: never).
bool dominates_brute(const std::vector<double>& a, const std::vector<double>& b, const std::vector<Direction>& directions) {
  bool better = false;
  for (size_t k = 0; k < a.size(); ++k) {
    if (std::isnan(a[k]) || std::isnan(b[k])) return false;
    const double x = directions[k] == Direction::Minimize ? a[k] : -a[k];
    const double y = directions[k] == Direction::Minimize ? b[k] : -b[k];
    if (x > y) return false;
    if (x < y) better = true;
  }
  return better;
}

bool complete(const std::vector<double>& point) {
  for (double v : point)
    if (std::isnan(v)) return false;
  return true;
}

std::vector<std::vector<double>> random_points(std::mt19937& random, size_t count, size_t dims, bool with_missing) {
  std::uniform_int_distribution<int> value(0, 6);
  std::uniform_int_distribution<int> chance(0, 19);
  std::vector<std::vector<double>> points(count, std::vector<double>(dims));
  for (auto& point : points)
    for (double& v : point) v = with_missing && chance(random) == 0 ? std::nan("") : value(random);
  if (count > 3) points[count - 1] = points[0];  // an exact duplicate
  return points;
}

// Volume dominated within the reference box, counted over unit cells (integer points only).
double hypervolume_brute(const std::vector<std::vector<double>>& points, const std::vector<Direction>& directions,
                         const std::vector<double>& reference) {
  const size_t dims = directions.size();
  double volume = 0;
  std::vector<int> cell(dims, -2);
  // Cells span [c, c+1] in each axis for c in -2..8; a cell counts when some point dominates it.
  std::function<void(size_t)> walk = [&](size_t axis) {
    if (axis == dims) {
      for (const auto& p : points) {
        if (!complete(p)) continue;
        bool covers = true;
        for (size_t k = 0; covers && k < dims; ++k) {
          const bool minimise = directions[k] == Direction::Minimize;
          const double low = cell[k], high = cell[k] + 1;
          covers = minimise ? (p[k] <= low && high <= reference[k]) : (p[k] >= high && low >= reference[k]);
        }
        if (covers) {
          volume += 1;
          return;
        }
      }
      return;
    }
    for (int c = -2; c <= 8; ++c) {
      cell[axis] = c;
      walk(axis + 1);
    }
  };
  walk(0);
  return volume;
}

}  // namespace

TEST_CASE("Pareto front and ranks match brute force (2 and 3 objectives, ties, duplicates, missing)", "[store][pareto]") {
  std::mt19937 random(1234);
  for (size_t dims : {2, 3}) {
    for (int round = 0; round < 60; ++round) {
      std::vector<Direction> directions;
      for (size_t k = 0; k < dims; ++k) directions.push_back(random() % 2 ? Direction::Minimize : Direction::Maximize);
      const auto points = random_points(random, 1 + random() % 40, dims, round % 2 == 1);
      std::vector<size_t> expected;
      for (size_t i = 0; i < points.size(); ++i) {
        if (!complete(points[i])) continue;
        bool dominated = false;
        for (size_t j = 0; j < points.size() && !dominated; ++j) dominated = dominates_brute(points[j], points[i], directions);
        if (!dominated) expected.push_back(i);
      }
      INFO("dims " << dims << " round " << round);
      CHECK(pareto_front(points, directions) == expected);

      // Ranks: a rank-r point is dominated only by points of lower rank, and by one of rank r-1.
      const auto ranks = pareto_ranks(points, directions);
      int deepest = -1;
      for (size_t i = 0; i < points.size(); ++i)
        if (complete(points[i])) deepest = std::max(deepest, ranks[i]);
      for (size_t i = 0; i < points.size(); ++i) {
        if (!complete(points[i])) {
          CHECK(ranks[i] == deepest + 1);
          continue;
        }
        bool by_previous = ranks[i] == 0;
        for (size_t j = 0; j < points.size(); ++j) {
          if (!dominates_brute(points[j], points[i], directions)) continue;
          CHECK(ranks[j] < ranks[i]);
          if (ranks[j] == ranks[i] - 1) by_previous = true;
        }
        CHECK(by_previous);
      }
      if (!points.empty() && points.size() > 3 && complete(points[0])) CHECK(ranks[0] == ranks[points.size() - 1]);
    }
  }
}

TEST_CASE("Hypervolume matches counting unit cells (1 to 3 objectives)", "[store][pareto]") {
  std::mt19937 random(99);
  for (size_t dims : {1, 2, 3}) {
    for (int round = 0; round < 25; ++round) {
      std::vector<Direction> directions;
      std::vector<double> reference;
      for (size_t k = 0; k < dims; ++k) {
        const bool minimise = random() % 2;
        directions.push_back(minimise ? Direction::Minimize : Direction::Maximize);
        reference.push_back(minimise ? 7 : -1);
      }
      const auto points = random_points(random, 1 + random() % 15, dims, round % 3 == 0);
      INFO("dims " << dims << " round " << round);
      CHECK(hypervolume(points, directions, reference) == Approx(hypervolume_brute(points, directions, reference)));
    }
  }
  CHECK(hypervolume({{1, 1}}, {Direction::Minimize, Direction::Minimize}, {0, 0}) == 0);  // nothing beats the reference
  CHECK_THROWS_AS(hypervolume({{1, 1}}, {Direction::Minimize, Direction::Minimize}, {2}), prime::UserError);
  CHECK_THROWS_AS(hypervolume({}, std::vector<Direction>(4, Direction::Minimize), std::vector<double>(4, 1)),
                  prime::UserError);
}
