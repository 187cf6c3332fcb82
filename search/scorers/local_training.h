// The short training the training scorers run on hybrids of the teacher built in memory (the
// conversion prime-convert would write, sharing every unchanged tensor with the teacher):
// layer-local alignment of the SSM mixers on the teacher's own inputs to each layer (layers are
// independent, so one step trains them all), and short KL distillation of the whole student.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/weights.h"
#include "search/scorers/scorer.h"
#include "train/models.h"

namespace prime::search {

// The teacher converted by `pattern` (one symbol per layer, "*" kept), its SSM tensors trainable.
train::RunModels build_student(const ScoringContext& context, const std::vector<std::string>& pattern);
// Every layer replaced by the context's --layer type, except `keep` (-1: none).
std::vector<std::string> replaced_pattern(const ScoringContext& context, int64_t keep = -1);

// `steps` AdamW steps on the sum over replaced layers of the normalised MSE of the student's
// mixer against the teacher's attention output, on the teacher's inputs (train batches, cycled).
void align_layer_local(train::RunModels& run, const ScoringContext& context, int64_t steps);
// `steps` AdamW steps of T=1 KL(teacher || student) on the train batches.
void distill(train::RunModels& run, const ScoringContext& context, int64_t steps);

// Per layer, the normalised MSE of the student's mixer against the teacher's attention output on
// the scoring batches (NaN for layers the student keeps).
std::vector<double> mixer_errors(train::RunModels& run, const ScoringContext& context);

struct StudentLoss {
  double kl = 0;            // KL(teacher || student), nats/token
  double nll_increase = 0;  // student NLL - teacher NLL, nats/token
};
StudentLoss student_loss(train::RunModels& run, const ScoringContext& context);

// The trained tensors (copies), and putting such copies back (by name; others are left alone).
model::TensorMap trained_snapshot(const train::RunModels& run);
void load_trained(train::RunModels& run, const model::TensorMap& snapshot);

}  // namespace prime::search
