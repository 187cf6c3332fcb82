#include <ATen/core/grad_mode.h>

#include "train/adamw.h"

#include <cmath>

#include "model/weights.h"
#include "util/error.h"

namespace prime::train {

AdamW::AdamW(std::vector<TrainedParameter> parameters, AdamWOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  for (const auto& parameter : parameters_) {
    PRIME_CHECK(parameter.tensor.scalar_type() == at::kFloat, "trained parameters are fp32: ", parameter.name);
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
  const double correction1 = 1 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double correction2 = 1 - std::pow(options_.beta2, static_cast<double>(steps_));
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    at::Tensor param = parameters_[i].tensor;
    const at::Tensor& grad = param.grad();
    if (!grad.defined()) continue;
    if (parameters_[i].decay && options_.weight_decay != 0) param.mul_(1 - lr * options_.weight_decay);
    exp_avg_[i].mul_(options_.beta1).add_(grad, 1 - options_.beta1);
    exp_avg_sq_[i].mul_(options_.beta2).addcmul_(grad, grad, 1 - options_.beta2);
    const at::Tensor denominator = (exp_avg_sq_[i] / correction2).sqrt_().add_(options_.eps);
    param.addcdiv_(exp_avg_[i], denominator, -lr / correction1);
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
