// GKA options against the float64 reference: every option that changes the forward pass is
// checked in all three forms (chunked, recurrent, step by step) against reference::gka_forward,
// which implements each option's meaning independently (design/ssm-layers.md, "GKA"); and
// bp_lambda, which only changes gradients, against finite differences of the reference with
// ||H_t||_F free or held fixed.
#include <catch2/catch.hpp>

#include <iomanip>
#include <iostream>
#include <sstream>
#include <vector>

#include "test_gka_util.h"
#include "test_ssm_mixer_util.h"

using namespace prime;
using namespace prime::test_gka;

namespace {

void report(const std::string& what, double error) {
  std::ostringstream line;
  line << "[gka] " << std::left << std::setw(66) << what << " max rel err " << std::scientific
       << std::setprecision(2) << error;
  std::cout << line.str() << std::endl;
}

}  // namespace

TEST_CASE("GKA options against the float64 reference", "[gka]") {
  const Shape shape{32, 8, 4, 2};
  const nlohmann::json variants[] = {
      {{"use_forgetting_gate", false}},
      {{"use_forgetting_gate_kk", false}},
      {{"use_beta_gate", false}},
      {{"use_alpha_connection", false}},
      {{"use_v_conv", false}},
      {{"use_gate", false}},
      {{"gla_rescale", false}},
      {{"num_iter", 0}},
      {{"num_iter", 10}},
      {{"ridge_strength", 0.1}, {"num_iter", 20}},
      {{"norm_eps", 1e-2}},
      {{"chunk_size", 7}, {"conv_size", 2}},
      {{"num_k_heads", 4}, {"num_v_heads", 1}},
      {{"num_q_heads", 2}, {"num_k_heads", 1}, {"num_v_heads", 4}},
  };
  const at::Tensor x64 = random_input(2, 40, shape.hidden, 42);
  const model::GkaConfig base_config = make_config(shape);
  const at::Tensor base_expected = reference::gka_forward(
      reference_dims(base_config), reference_weights(random_weights(base_config, 41)), x64);
  for (const nlohmann::json& overrides : variants) {
    const model::GkaConfig config = make_config(shape, overrides);
    const model::TensorMap w64 = random_weights(config, 41);
    const at::Tensor expected =
        reference::gka_forward(reference_dims(config), reference_weights(w64), x64);
    model::GkaMixer mixer(config, cast_weights(w64, at::kFloat), kPrefix);
    CHECK(testing::forms_vs_reference(mixer, x64.to(at::kFloat), expected, overrides.dump()) <= 1e-5);
    // The option changes the function, so a mixer that ignored it would fail the check above.
    // (Head-count variants draw other weights, so they differ trivially; chunk_size only
    // changes how the same function is computed.)
    if (!overrides.contains("chunk_size")) CHECK(rel_error(expected, base_expected) > 1e-3);
  }
}

TEST_CASE("GKA bp_lambda: gradients against finite differences of the reference", "[gka]") {
  // Float64 throughout. loss = sum(out * probe); d loss / d x at a few entries, by autograd on
  // the chunked form and by central differences of the reference. bp_lambda = false must give
  // the derivative with ||H_t||_F held at its value for the unperturbed input.
  const Shape shape{16, 4, 2, 2};
  const int64_t B = 1, T = 6;
  const at::Tensor x0 = random_input(B, T, shape.hidden, 82);
  at::manual_seed(83);
  const at::Tensor probe = at::randn({B, T, shape.hidden}, at::kDouble);
  std::vector<double> gradients[2];
  for (bool bp_lambda : {true, false}) {
    const model::GkaConfig config = make_config(shape, {{"bp_lambda", bp_lambda}});
    const model::TensorMap w64 = random_weights(config, 81);
    const reference::Weights ref_weights = reference_weights(w64);
    reference::GkaDims dims = reference_dims(config);
    std::vector<double> frob;
    if (!bp_lambda) {
      dims.record_frob = &frob;
      reference::gka_forward(dims, ref_weights, x0);
      dims.record_frob = nullptr;
      dims.frozen_frob = &frob;
    }
    model::GkaMixer mixer(config, w64, kPrefix);
    at::Tensor x = x0.clone().requires_grad_(true);
    (mixer.forward(x, nullptr) * probe).sum().backward();
    const at::Tensor grad = x.grad();
    double max_diff = 0.0, max_fd = 0.0;
    at::Tensor perturbed = x0.clone();
    double* data = perturbed.data_ptr<double>();
    const double eps = 1e-6;
    for (int64_t index : {3, 17, 40, 51, 77, 95}) {
      const double saved = data[index];
      data[index] = saved + eps;
      const double plus = (reference::gka_forward(dims, ref_weights, perturbed) * probe).sum().item<double>();
      data[index] = saved - eps;
      const double minus = (reference::gka_forward(dims, ref_weights, perturbed) * probe).sum().item<double>();
      data[index] = saved;
      const double fd = (plus - minus) / (2 * eps);
      const double autograd = grad.view({-1})[index].item<double>();
      gradients[bp_lambda ? 0 : 1].push_back(autograd);
      max_diff = std::max(max_diff, std::abs(autograd - fd));
      max_fd = std::max(max_fd, std::abs(fd));
    }
    const double error = max_diff / max_fd;
    report(std::string("bp_lambda=") + (bp_lambda ? "true" : "false") +
               " d/dx autograd vs reference finite differences (f64)",
           error);
    CHECK(error <= 1e-6);
  }
  // The two meanings give different gradients, so swapping them would fail the checks above.
  double max_gap = 0.0, max_grad = 0.0;
  for (size_t i = 0; i < gradients[0].size(); ++i) {
    max_gap = std::max(max_gap, std::abs(gradients[0][i] - gradients[1][i]));
    max_grad = std::max(max_grad, std::abs(gradients[0][i]));
  }
  report("bp_lambda true vs false gradient gap", max_gap / max_grad);
  CHECK(max_gap / max_grad > 1e-4);
}
