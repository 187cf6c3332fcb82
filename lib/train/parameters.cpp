#include "train/parameters.h"

#include <sstream>

#include "io/architecture.h"
#include "util/error.h"

namespace prime::train {
namespace {

bool starts_with(const std::string& text, const std::string& prefix) {
  return !prefix.empty() && text.compare(0, prefix.size(), prefix) == 0;
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct GroupName {
  const char* name;
  ParamGroup group;
};
constexpr GroupName kGroups[] = {{"ssm", ParamGroup::Ssm},   {"attn", ParamGroup::Attn},
                                 {"mlp", ParamGroup::Mlp},   {"norm", ParamGroup::Norm},
                                 {"embed", ParamGroup::Embed}, {"head", ParamGroup::Head}};

}  // namespace

const char* group_name(ParamGroup group) {
  for (const auto& entry : kGroups)
    if (entry.group == group) return entry.name;
  return "?";
}

std::set<ParamGroup> parse_groups(const std::string& spec) {
  std::set<ParamGroup> groups;
  std::stringstream items(spec);
  std::string item;
  while (std::getline(items, item, ',')) {
    if (item == "all") {
      for (const auto& entry : kGroups) groups.insert(entry.group);
      continue;
    }
    bool found = false;
    for (const auto& entry : kGroups)
      if (item == entry.name) groups.insert(entry.group), found = true;
    if (!found)
      throw user_error("--train: unknown parameter group '", item, "' (groups: ssm, attn, mlp, norm, embed, head, all)");
  }
  if (groups.empty()) throw user_error("--train: no parameter group given");
  return groups;
}

std::string groups_string(const std::set<ParamGroup>& groups) {
  std::string out;
  for (const auto& entry : kGroups)
    if (groups.count(entry.group)) out += (out.empty() ? "" : ",") + std::string(entry.name);
  return out;
}

ParamGroup classify(const io::ModelConfig& config, const std::string& name) {
  const auto& arch = io::find_architecture(config.model_type, config.architecture, config.model_type);
  if (name == arch.name("embed_tokens")) return ParamGroup::Embed;
  if (name == arch.name("lm_head")) return ParamGroup::Head;
  if (name == arch.name("final_norm")) return ParamGroup::Norm;
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string prefix = arch.name("layer_prefix", layer);
    if (!starts_with(name, prefix)) continue;
    if (name == arch.name("input_layernorm", layer) || name == arch.name("post_attention_layernorm", layer))
      return ParamGroup::Norm;
    if (starts_with(name, arch.name("attention_prefix", layer)))
      return config.layer_pattern.at(layer) == "*" ? ParamGroup::Attn : ParamGroup::Ssm;
    if (starts_with(name, arch.name("mlp_prefix", layer))) return ParamGroup::Mlp;
    for (const char* mixer : {"gka.", "gdn.", "mamba.", "swa."})
      if (starts_with(name, prefix + mixer)) return ParamGroup::Ssm;
  }
  throw internal_error("tensor '", name, "' belongs to no parameter group");
}

bool takes_weight_decay(const std::string& name, const at::Tensor& tensor) {
  for (const char* suffix : {".A_log", ".dt_bias", ".D", ".bias"})
    if (ends_with(name, suffix)) return false;
  if (name.find("norm") != std::string::npos) return false;
  return tensor.dim() >= 2;
}

std::vector<TrainedParameter> make_trainable(model::TensorMap& weights, const io::ModelConfig& config,
                                             const std::set<ParamGroup>& groups) {
  std::vector<TrainedParameter> trained;
  for (auto& [name, tensor] : weights) {
    const ParamGroup group = classify(config, name);
    if (!groups.count(group)) continue;
    // Owned memory in fp32 (the master copy AdamW updates), never a view of a mapped file.
    tensor = tensor.detach().to(at::kFloat).clone().requires_grad_(true);
    trained.push_back({name, group, tensor, takes_weight_decay(name, tensor)});
  }
  if (trained.empty())
    throw user_error("--train ", groups_string(groups), " selects no tensor of this model (pattern ",
                     io::join_layer_pattern(config.layer_pattern), ")");
  return trained;
}

}  // namespace prime::train
