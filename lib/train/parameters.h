// Parameter groups of a model (design/training.md): which named tensors a run trains, which get
// weight decay, and turning the trained ones into owned, writable fp32 leaves while frozen ones
// stay shared (never copied).
#pragma once

#include <ATen/ATen.h>

#include <set>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "model/weights.h"

namespace prime::train {

enum class ParamGroup { Ssm, Attn, Mlp, Norm, Embed, Head };

const char* group_name(ParamGroup group);

// "ssm", "ssm,norm", "ssm,norm,attn", "all", ... UserError naming an unknown group or an empty
// list.
std::set<ParamGroup> parse_groups(const std::string& spec);
std::string groups_string(const std::set<ParamGroup>& groups);

// The group of a checkpoint tensor, from the architecture's tensor names and the layer pattern:
// tensors of a GKA/GDN/M2/SWA mixer are `ssm`, a kept attention layer's are `attn`, ... A name
// that belongs to no group is an InternalError (every tensor a model loads has one).
ParamGroup classify(const io::ModelConfig& config, const std::string& name);

// AdamW decay: none for norms, biases, A_log, dt_bias, D (and 1-element/1-D gains generally).
bool takes_weight_decay(const std::string& name, const at::Tensor& tensor);

struct TrainedParameter {
  std::string name;
  ParamGroup group;
  at::Tensor tensor;  // the model's own tensor (requires_grad, fp32, owned)
  bool decay = false;
};

// Replaces every tensor of `weights` in `groups` by an owned fp32 copy that requires grad (so it
// never aliases an mmap'd page or a tensor another model shares), and returns them in name
// order. Call before the model is built from `weights`: the model then holds these leaves.
// UserError when the groups select nothing.
std::vector<TrainedParameter> make_trainable(model::TensorMap& weights, const io::ModelConfig& config,
                                             const std::set<ParamGroup>& groups);

}  // namespace prime::train
