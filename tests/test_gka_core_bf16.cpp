// GKA's chunked core on bf16 operands with a gradient to record (the bf16 forward takes none; before,
// the torch form stopped on the mixed dtypes, or ran its solve in bf16): it runs the fp32 form on fp32
// copies, so o and the gradients are the float64 core's on the same bf16 values within bf16's rounding
// of the results, in the operands' dtype, and the final states come back fp32.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <iostream>
#include <vector>

#include "model/gka_core.h"

using namespace prime;

namespace {

// GKA's prepared inputs as the mixer makes them, q, k, v rounded to bf16, in `type` (the gates fp32
// unless type is float64).
model::GkaMixer::Prepared inputs(int64_t B, int64_t T, int64_t H, int64_t D, at::ScalarType type) {
  at::manual_seed(5);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto unit = [&](std::vector<int64_t> sizes) {
    const at::Tensor x = at::randn(sizes, f64);
    return x / x.norm(2, -1, true);
  };
  const at::Tensor beta = (at::rand({B, T, H}, f64) * 0.9 + 0.1).unsqueeze(-1);
  const at::ScalarType gates = type == at::kDouble ? at::kDouble : at::kFloat;
  model::GkaMixer::Prepared in;
  in.q = unit({B, T, H, D}).to(at::kBFloat16).to(type);
  in.k = (unit({B, T, H, D}) * beta).to(at::kBFloat16).to(type);
  in.v = (at::randn({B, T, H, D}, f64) * beta).to(at::kBFloat16).to(type);
  in.log_decay_kv = (-at::softplus(at::randn({B, T, H}, f64)) * 0.1 - 1e-3).to(gates);
  in.log_decay_kk = in.log_decay_kv;
  in.alpha = at::sigmoid(at::randn({B, T, H}, f64)).to(gates);
  for (at::Tensor* x : {&in.q, &in.k, &in.v}) *x = x->detach().requires_grad_(true);
  return in;
}

double relative(const at::Tensor& ours, const at::Tensor& reference) {
  return ((ours.to(at::kDouble) - reference).norm() / reference.norm()).item<double>();
}

}  // namespace

TEST_CASE("GKA core on bf16 operands with a gradient: the fp32 form on fp32 copies", "[gka]") {
  const int64_t B = 1, T = 100, H = 2, D = 32;
  model::gka_detail::SolveOptions options;
  options.output_scale = 1.0 / std::sqrt(static_cast<double>(D));
  const model::GkaMixer::Prepared ref_in = inputs(B, T, H, D, at::kDouble);
  const at::Tensor zeros64 = at::zeros({B, H, D, D}, at::TensorOptions().dtype(at::kDouble));
  const model::gka_detail::ChunkedResult ref = model::gka_detail::chunked_core(ref_in, zeros64, zeros64, 64, options);
  const at::Tensor grad = at::randn_like(ref.o);
  const auto ref_grads = torch::autograd::grad({ref.o}, {ref_in.q, ref_in.k, ref_in.v}, {grad});
  for (const at::ScalarType states : {at::kFloat, at::kBFloat16}) {
    INFO("states " << states);
    const model::GkaMixer::Prepared in = inputs(B, T, H, D, at::kBFloat16);
    const at::Tensor zeros = at::zeros({B, H, D, D}, at::TensorOptions().dtype(states));
    const model::gka_detail::ChunkedResult ours = model::gka_detail::chunked_core(in, zeros, zeros, 64, options);
    CHECK(ours.o.scalar_type() == at::kBFloat16);
    CHECK(ours.kk_state.scalar_type() == at::kFloat);
    CHECK(ours.kv_state.scalar_type() == at::kFloat);
    const double o_error = relative(ours.o, ref.o);
    CHECK(o_error <= 5e-3);  // bf16's rounding of o (unit roundoff 3.9e-3)
    CHECK(relative(ours.kk_state, ref.kk_state) <= 1e-5);
    CHECK(relative(ours.kv_state, ref.kv_state) <= 1e-5);
    const auto grads = torch::autograd::grad({ours.o}, {in.q, in.k, in.v}, {grad.to(at::kBFloat16)});
    double worst = 0.0;
    for (size_t i = 0; i < grads.size(); ++i) {
      CHECK(grads[i].scalar_type() == at::kBFloat16);
      worst = std::max(worst, relative(grads[i], ref_grads[i]));
    }
    CHECK(worst <= 1e-2);  // the incoming gradient rounded to bf16, then each gradient
    std::cout << "[gka] core on bf16 operands, " << states << " states: o vs float64 " << o_error
              << ", worst gradient " << worst << std::endl;
  }
}
