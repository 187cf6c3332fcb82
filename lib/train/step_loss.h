// The loss of one micro-batch for each stage (design/training.md "Stages"), given the run's
// models: align = normalised MSE of the final hidden state (+ per-replaced-layer mixer or block
// MSE on the teacher's inputs), distill = T^2 KL (+ CE), pt = next-token CE.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>

#include "train/batches.h"
#include "train/models.h"
#include "train/train_options.h"

namespace prime::train {

struct StepLoss {
  at::Tensor loss;                      // scalar fp32, differentiable
  std::map<std::string, double> parts;  // components for logging
};

StepLoss compute_step_loss(const TrainOptions& options, RunModels& models, const Batch& batch);

}  // namespace prime::train
