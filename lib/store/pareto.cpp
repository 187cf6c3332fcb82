// Pareto fronts and hypervolume.
#include "store/pareto.h"

#include "util/error.h"

namespace prime::store {

std::vector<size_t> pareto_front(const std::vector<std::vector<double>>&, const std::vector<Direction>&) {
  throw internal_error("pareto_front is not implemented yet");
}
std::vector<int> pareto_ranks(const std::vector<std::vector<double>>&, const std::vector<Direction>&) {
  throw internal_error("pareto_ranks is not implemented yet");
}
double hypervolume(const std::vector<std::vector<double>>&, const std::vector<Direction>&, const std::vector<double>&) {
  throw internal_error("hypervolume is not implemented yet");
}

}  // namespace prime::store
