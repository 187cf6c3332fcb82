// GKA from an attention layer (design/ssm-layers.md, "Initialisation from attention"):
// q/k/v/o_proj <- W_Q/W_K/W_V/W_O, g_proj <- the gate recipe; a_proj, b_proj, alpha_proj and the
// convs random, their biases 0, A_log and dt_bias as Mamba's, o_norm 1. Qwen3's q_norm/k_norm
// are not carried (GKA L2-normalises q and k) and the attention's biases have no place to go.
#include "convert/weight_map.h"
#include "util/error.h"

namespace prime::convert {

std::vector<TargetTensor> gka_targets(const LayerInit& init) {
  std::vector<TargetTensor> targets;
  for (const auto& spec : init.specs) {
    const std::string local = spec.name.substr(init.prefix.size());
    const auto& shape = spec.shape;
    if (local == "q_proj.weight") targets.push_back(transfer_target(init, spec.name, init.attention.q, shape));
    else if (local == "k_proj.weight") targets.push_back(transfer_target(init, spec.name, init.attention.k, shape));
    else if (local == "v_proj.weight") targets.push_back(transfer_target(init, spec.name, init.attention.v, shape));
    else if (local == "o_proj.weight") targets.push_back(transfer_target(init, spec.name, init.attention.o, shape));
    else if (local == "g_proj.weight") targets.push_back(gate_target(init, spec.name, shape));
    else if (local == "a_proj.weight" || local == "b_proj.weight" || local == "alpha_proj.weight" ||
             local == "q_conv1d.weight" || local == "k_conv1d.weight" || local == "v_conv1d.weight")
      targets.push_back(normal_target(init, spec.name, shape));
    else if (local == "b_proj.bias" || local == "alpha_proj.bias")
      targets.push_back(fill_target(spec.name, init.dtype, shape, 0.0));
    else if (local == "A_log") targets.push_back(a_log_target(init, spec.name, shape.at(0)));
    else if (local == "dt_bias") targets.push_back(dt_bias_target(init, spec.name, shape.at(0)));
    else if (local == "o_norm.weight") targets.push_back(fill_target(spec.name, init.dtype, shape, 1.0));
    else throw internal_error("GKA weight map: no rule for ", spec.name);
  }
  return targets;
}

}  // namespace prime::convert
