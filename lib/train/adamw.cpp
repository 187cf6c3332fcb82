#include <ATen/core/grad_mode.h>

#include "train/adamw.h"

#include <ATen/ops/_fused_adamw.h>

#include <vector>

#include "model/weights.h"
#include "util/error.h"

namespace prime::train {

AdamW::AdamW(std::vector<TrainedParameter> parameters, AdamWOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  for (const auto& parameter : parameters_) {
    PRIME_CHECK(parameter.tensor.scalar_type() == at::kFloat, "trained parameters are fp32: ", parameter.name);
    // The fused update walks each tensor's storage as one flat array.
    PRIME_CHECK(parameter.tensor.is_contiguous(), "trained parameters are contiguous: ", parameter.name);
    exp_avg_.push_back(at::zeros_like(parameter.tensor, at::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(at::zeros_like(parameter.tensor, at::MemoryFormat::Contiguous));
  }
}

void AdamW::zero_grad() {
  for (auto& parameter : parameters_) {
    at::Tensor& grad = parameter.tensor.mutable_grad();
    if (grad.defined()) grad.zero_();
  }
}

void AdamW::step(double lr) {
  ++steps_;
  at::NoGradGuard no_grad;
  // ATen's fused AdamW (one multi-tensor kernel per group on CUDA, one loop on the CPU) in place
  // of ~10 elementwise passes per parameter; two groups, as decay is per parameter.
  for (const bool decay : {true, false}) {
    std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    for (size_t i = 0; i < parameters_.size(); ++i) {
      const at::Tensor& param = parameters_[i].tensor;
      if (!param.grad().defined() || (parameters_[i].decay && options_.weight_decay != 0) != decay) continue;
      params.push_back(param);
      grads.push_back(param.grad().contiguous());  // read as a flat array too
      exp_avgs.push_back(exp_avg_[i]);
      exp_avg_sqs.push_back(exp_avg_sq_[i]);
    }
    if (params.empty()) continue;
    // The step count each update's bias corrections use (read, not written, by the op).
    const at::Tensor step = at::full({}, static_cast<double>(steps_), params.front().options());
    steps.assign(params.size(), step);
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr, options_.beta1,
                      options_.beta2, decay ? options_.weight_decay : 0.0, options_.eps, /*amsgrad=*/false,
                      /*maximize=*/false);
  }
}

model::TensorMap AdamW::state() const {
  model::TensorMap state;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    state["exp_avg." + parameters_[i].name] = exp_avg_[i].cpu();
    state["exp_avg_sq." + parameters_[i].name] = exp_avg_sq_[i].cpu();
  }
  state["step"] = at::full({1}, steps_, at::kLong);
  return state;
}

void AdamW::load_state(const model::TensorMap& state) {
  auto take = [&](const std::string& key, const at::Tensor& like) {
    auto found = state.find(key);
    if (found == state.end()) throw user_error("optimizer state has no '", key, "' (a checkpoint of another plan?)");
    if (found->second.sizes() != like.sizes())
      throw user_error("optimizer state '", key, "' has shape ", model::shape_string(found->second.sizes()),
                       ", the model's parameter has ", model::shape_string(like.sizes()));
    return found->second.to(like.device(), at::kFloat);
  };
  for (size_t i = 0; i < parameters_.size(); ++i) {
    exp_avg_[i].copy_(take("exp_avg." + parameters_[i].name, exp_avg_[i]));
    exp_avg_sq_[i].copy_(take("exp_avg_sq." + parameters_[i].name, exp_avg_sq_[i]));
  }
  auto found = state.find("step");
  if (found == state.end() || found->second.numel() != 1) throw user_error("optimizer state has no step count");
  steps_ = found->second.item<int64_t>();
}

}  // namespace prime::train
