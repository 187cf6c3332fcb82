// Activation recomputation (gradient checkpointing) for one piece of a forward: only the input
// is kept for backward; backward runs the piece again with autograd on and back-propagates
// through that copy. Parameters the piece reads get their gradients as in a plain forward.
#pragma once

#include <ATen/ATen.h>

#include <functional>

namespace prime::model {

// fn must be deterministic (the same output when run again) and must not touch caches.
at::Tensor recompute_in_backward(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& input);

}  // namespace prime::model
