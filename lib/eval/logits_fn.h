// What the evaluations need from a model: logits for a batch of token ids. Keeping it a function
// lets tests score hand-built "models" (e.g. an exact copier) through the same code path.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <functional>

#include "model/hybrid_model.h"

namespace prime::eval {

// ids [B, T] int64 (CPU) -> logits [B, T, V], any floating dtype, any device.
using LogitsFn = std::function<at::Tensor(const at::Tensor& ids)>;

// A full forward of `model` without a cache and without autograd.
inline LogitsFn model_logits(model::HybridModel& model) {
  return [&model](const at::Tensor& ids) {
    at::NoGradGuard no_grad;
    return model.forward(ids.to(model.device()));
  };
}

}  // namespace prime::eval
