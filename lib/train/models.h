// The two models of a priming run: the student (trained) and the frozen teacher, built so that
// every tensor they have in common (same name, dtype, shape and values) exists once.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "io/source.h"
#include "model/hybrid_model.h"
#include "train/parameters.h"

namespace prime::train {

struct RunModels {
  io::Source student_source;
  std::unique_ptr<model::HybridModel> student, teacher;  // teacher null for pt
  std::vector<TrainedParameter> trained;
  std::vector<int64_t> replaced_layers;  // student layers whose type differs from the teacher's
  int64_t shared_tensors = 0;            // student tensors that are the teacher's own
  int64_t student_parameters = 0, teacher_parameters = 0, trained_parameters = 0;
};

struct ModelSetup {
  std::string student_spec;  // model spec, or a checkpoint directory when resuming
  std::string teacher_spec;  // empty: no teacher
  std::set<ParamGroup> groups;
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;  // frozen weights; trained ones are fp32
};

// UserError when the teacher and student disagree on vocabulary, hidden size or layer count.
RunModels build_run_models(const ModelSetup& setup);

}  // namespace prime::train
