#include "train/distributed.h"

#include <cstdlib>

#include "util/error.h"

namespace prime::train {

struct Distributed::Group {};

Distributed Distributed::from_environment(const std::string& device) {
  Distributed dist;
  const char* world = std::getenv("WORLD_SIZE");
  if (world && std::atoll(world) > 1)
    throw user_error("WORLD_SIZE=", world, ": this build of prime-train runs one process; data-parallel ranks "
                     "need the c10d backends");
  return dist;
}

void Distributed::average(std::vector<at::Tensor>& tensors) {}
double Distributed::average_scalar(double value) { return value; }
void Distributed::broadcast_parameters(std::vector<TrainedParameter>& parameters) {}
void Distributed::barrier() {}

}  // namespace prime::train
