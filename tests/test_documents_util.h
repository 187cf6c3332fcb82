// Shared by the packed-documents tests of the SSM mixers (GDN, GKA): a mixer's packed path
// (its forward_documents) against the per-document default (Mixer::forward_documents, which
// runs each document as its own sequence), output and the gradients of every leaf.
#pragma once

#include <ATen/ATen.h>
#include <catch2/catch.hpp>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <vector>

#include "model/documents.h"
#include "model/mixer.h"

namespace prime::testing {

// ||got - want|| / ||want||, in float64.
inline double norm_relative(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor a = got.to(at::kDouble), b = want.to(at::kDouble);
  return (a - b).norm().item<double>() / std::max(b.norm().item<double>(), 1e-300);
}

struct PackedVsApart {
  double out_error = 0, worst_gradient = 0;
  size_t compared = 0;  // leaves with a gradient (a weight the configuration does not use has none)
};

// x [B, T, hidden] (a leaf among `leaves`); the loss is sum(out * a seeded random weight).
inline PackedVsApart packed_vs_per_document(model::Mixer& mixer, const at::Tensor& x,
                                            const model::Documents& documents, const std::vector<at::Tensor>& leaves) {
  at::manual_seed(17);
  const at::Tensor out_weight = at::randn(x.sizes(), x.options().requires_grad(false));
  const at::Tensor packed = mixer.forward_documents(x, documents);
  const at::Tensor apart = mixer.model::Mixer::forward_documents(x, documents);
  const auto packed_grads = torch::autograd::grad({(packed * out_weight).sum()}, leaves, {}, false, false, true);
  const auto apart_grads = torch::autograd::grad({(apart * out_weight).sum()}, leaves, {}, false, false, true);
  PackedVsApart result;
  result.out_error = norm_relative(packed, apart);
  for (size_t i = 0; i < leaves.size(); ++i) {
    REQUIRE(packed_grads[i].defined() == apart_grads[i].defined());
    if (!packed_grads[i].defined()) continue;
    result.worst_gradient = std::max(result.worst_gradient, norm_relative(packed_grads[i], apart_grads[i]));
    ++result.compared;
  }
  return result;
}

// Rows of one document each (one from position 0, one continuing from 4): forward_documents is
// the plain forward, to the bit. hidden: the mixer's input width.
inline void check_one_document_per_row(model::Mixer& mixer, int64_t hidden) {
  const at::Tensor positions = at::cat({at::arange(70, at::kLong), at::arange(4, 74, at::kLong)}).view({2, 70});
  const model::Documents documents = model::make_documents(positions, at::kCPU);
  REQUIRE(documents.one_per_row);
  at::manual_seed(9);
  const at::Tensor x = at::randn({2, 70, hidden}, at::kDouble);
  CHECK(mixer.forward_documents(x, documents).equal(mixer.forward(x, nullptr)));
}

}  // namespace prime::testing
