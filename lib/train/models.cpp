#include "train/models.h"

#include <ATen/core/grad_mode.h>

#include "convert/model_spec.h"
#include "util/error.h"

namespace prime::train {
namespace {

int64_t count_parameters(const model::TensorMap& weights) {
  int64_t total = 0;
  for (const auto& [name, tensor] : weights) total += tensor.numel();
  return total;
}

}  // namespace

RunModels build_run_models(const ModelSetup& setup) {
  model::LoadOptions options;
  options.device = setup.device;
  options.dtype = setup.dtype;
  RunModels run;
  convert::SpecWeights student = convert::load_spec_weights(setup.student_spec, options);
  run.student_source = student.source;
  if (!setup.teacher_spec.empty()) {
    convert::SpecWeights teacher = convert::load_spec_weights(setup.teacher_spec, options);
    const io::ModelConfig &s = student.config, &t = teacher.config;
    if (s.vocab_size != t.vocab_size)
      throw user_error("teacher and student have different vocabularies: ", t.vocab_size, " (", setup.teacher_spec,
                       ") vs ", s.vocab_size, " (", setup.student_spec, ")");
    if (s.hidden_size != t.hidden_size)
      throw user_error("teacher and student have different hidden sizes: ", t.hidden_size, " vs ", s.hidden_size);
    if (s.num_hidden_layers != t.num_hidden_layers)
      throw user_error("teacher and student have different layer counts: ", t.num_hidden_layers, " vs ",
                       s.num_hidden_layers);
    for (int64_t layer = 0; layer < s.num_hidden_layers; ++layer)
      if (s.layer_pattern.at(layer) != t.layer_pattern.at(layer)) run.replaced_layers.push_back(layer);
    // One copy of whatever the two have in common; a trained tensor is replaced by an owned
    // copy below, so sharing it first costs nothing.
    at::NoGradGuard no_grad;
    for (auto& [name, tensor] : student.weights) {
      auto found = teacher.weights.find(name);
      if (found == teacher.weights.end() || found->second.sizes() != tensor.sizes() ||
          found->second.scalar_type() != tensor.scalar_type() || !at::equal(found->second, tensor))
        continue;
      tensor = found->second;
      ++run.shared_tensors;
    }
    run.teacher_parameters = count_parameters(teacher.weights);
    run.teacher = std::make_unique<model::HybridModel>(teacher.config, teacher.weights);
  }
  run.trained = make_trainable(student.weights, student.config, setup.groups);
  for (const auto& parameter : run.trained) run.trained_parameters += parameter.tensor.numel();
  run.student_parameters = count_parameters(student.weights);
  run.student = std::make_unique<model::HybridModel>(student.config, student.weights);
  return run;
}

}  // namespace prime::train
