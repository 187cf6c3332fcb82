// SWA from an attention layer: the layer's own weights (q/k/v/o projections, biases, q_norm and
// k_norm) move unchanged under the `swa.` prefix whatever the --init recipe, since SWA is the
// same attention restricted to a window (the training-free replacement).
#include "convert/weight_map.h"
#include "io/architecture.h"
#include "util/error.h"

namespace prime::convert {

std::vector<TargetTensor> swa_targets(const LayerInit& init) {
  const auto& arch = io::find_architecture(init.source->model_type, init.source->architecture,
                                           init.source->model_type);
  const std::string attention_prefix = arch.name("attention_prefix", init.layer);
  std::vector<TargetTensor> targets;
  for (const auto& spec : init.specs) {
    const std::string local = spec.name.substr(init.prefix.size());
    targets.push_back(copy_target(init, spec.name, attention_prefix + local, spec.shape));
  }
  return targets;
}

}  // namespace prime::convert
