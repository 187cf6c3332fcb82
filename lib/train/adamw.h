// AdamW with decoupled weight decay and fp32 state (moments and the step count per parameter),
// whose state is a plain name -> tensor map so a checkpoint stores it as safetensors and a
// resumed run continues bit for bit. The update is ATen's fused AdamW (at::_fused_adamw_: one
// multi-tensor kernel per parameter group on CUDA), the same rule as the textbook form.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "model/weights.h"
#include "train/parameters.h"

namespace prime::train {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(std::vector<TrainedParameter> parameters, AdamWOptions options);

  const std::vector<TrainedParameter>& parameters() const { return parameters_; }
  // One update at learning rate lr from each parameter's .grad (undefined grads count as zero).
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return steps_; }

  // "exp_avg.<name>", "exp_avg_sq.<name>" (fp32, CPU copies) and "step" ([1] int64).
  model::TensorMap state() const;
  // UserError when a parameter's moments are missing or have another shape.
  void load_state(const model::TensorMap& state);

 private:
  std::vector<TrainedParameter> parameters_;
  AdamWOptions options_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  int64_t steps_ = 0;
};

}  // namespace prime::train
