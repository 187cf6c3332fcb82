// kernels/ssd_chunk's bf16 form (ssd_chunked_bf16): Mamba-2's chunked SSD scan on bf16 x, B, C,
// forward and backward, against the torch-ops form in float64 on the same bf16-rounded inputs
// (what is measured is the kernels' own rounding), outputs poisoned with NaN first; where it
// applies; PRIME_SSM_CORE.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/ssd_chunk/ssd_chunk.h"
#include "model/mamba2.h"
#include "test_helpers.h"
#include "test_kernels_util.h"
#include "util/error.h"

using namespace prime;

namespace {

using test::norm_relative_error;

// float64 CPU inputs already rounded to what the bf16 form reads: x, B, C through bf16, delta,
// A and the state through fp32. delta in (0, 1), A from -0.1 to -8 over the heads.
struct Bf16SsdInputs {
  at::Tensor x, delta, A, Bm, Cm, state;
};
Bf16SsdInputs rounded_inputs(int64_t B, int64_t T, int64_t H, int64_t D, uint64_t seed) {
  at::manual_seed(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto bf16 = [](const at::Tensor& t) { return t.to(at::kBFloat16).to(at::kDouble); };
  const auto fp32 = [](const at::Tensor& t) { return t.to(at::kFloat).to(at::kDouble); };
  Bf16SsdInputs in;
  in.x = bf16(at::randn({B, T, H, D}, f64));
  in.delta = fp32(at::rand({B, T, H}, f64) * 0.98 + 0.01);
  in.A = fp32(H == 1 ? at::full({1}, -1.0, f64) : -at::linspace(0.1, 8.0, H, f64));
  in.Bm = bf16(at::randn({B, T, H, D}, f64) / std::sqrt(static_cast<double>(D)));
  in.Cm = bf16(at::randn({B, T, H, D}, f64) / std::sqrt(static_cast<double>(D)) * 2.0);
  in.state = fp32(at::randn({B, H, D, D}, f64) * 0.5);
  return in;
}

struct Errors {
  double y, y_worst, state;
};

Errors errors_of(const std::pair<at::Tensor, at::Tensor>& ours, const std::pair<at::Tensor, at::Tensor>& reference) {
  const at::Tensor y = ours.first.cpu().to(at::kDouble);
  return {norm_relative_error(y, reference.first),
          (y - reference.first).abs().max().item<double>() / reference.first.abs().max().item<double>(),
          norm_relative_error(ours.second, reference.second)};
}

// The six gradients (x, delta, A, Bm, Cm, state) of sum(y * wy) + sum(final * wf) through
// `run` on leaves made from the float64 inputs by `leaf(index, tensor)`, returned on the CPU in
// float64; wy bf16-exact and wf fp32-exact (the bf16 form reads dy in bf16 and d_final in fp32).
struct Weights {
  at::Tensor wy, wf;
};
Weights loss_weights(const Bf16SsdInputs& in, uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn(in.x.sizes(), at::kDouble).to(at::kBFloat16).to(at::kDouble),
          at::randn(in.state.sizes(), at::kDouble).to(at::kFloat).to(at::kDouble)};
}

template <typename Leaf, typename Run>
std::vector<at::Tensor> gradients_of(const Bf16SsdInputs& in, const Weights& w, bool with_state, Leaf&& leaf,
                                     Run&& run) {
  std::vector<at::Tensor> leaves;
  int index = 0;
  for (const at::Tensor* t : {&in.x, &in.delta, &in.A, &in.Bm, &in.Cm, &in.state})
    leaves.push_back(leaf(index++, *t).detach().requires_grad_(true));
  const auto [y, final_state] =
      run(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], with_state ? leaves[5] : at::Tensor());
  const at::Tensor loss = (y.to(at::kDouble).cpu() * w.wy).sum() + (final_state.to(at::kDouble).cpu() * w.wf).sum();
  loss.backward();
  std::vector<at::Tensor> grads;
  for (int i = 0; i < (with_state ? 6 : 5); ++i) grads.push_back(leaves[i].grad().cpu().to(at::kDouble));
  return grads;
}

const char* const kGradientNames[] = {"x", "delta", "A", "Bm", "Cm", "state"};

// gradients_of's leaves: the float64 inputs as they are (the reference), or on CUDA as the bf16
// form takes them (x, Bm, Cm bf16; delta, A and the state fp32).
at::Tensor as_is(int, const at::Tensor& t) { return t; }
at::Tensor bf16_form_leaf(int index, const at::Tensor& t) {
  return t.to(at::Device(at::kCUDA, 0), index == 0 || index == 3 || index == 4 ? at::kBFloat16 : at::kFloat);
}

// How far each float64 gradient moves when x, Bm, Cm and wy carry bf16-sized rounding (each
// element times 1 + 2^-9 xi, xi standard normal): a gradient that sums many cancelling terms (dA
// sums over every token) is that ill-conditioned whatever computes it.
template <typename Run>
std::vector<double> bf16_sensitivity(const Bf16SsdInputs& in, const Weights& w, bool with_state,
                                     const std::vector<at::Tensor>& reference, Run&& run) {
  at::manual_seed(97);
  const auto nudge = [](const at::Tensor& t) { return t * (1.0 + std::ldexp(1.0, -9) * at::randn_like(t)); };
  Bf16SsdInputs nudged = in;
  nudged.x = nudge(in.x), nudged.Bm = nudge(in.Bm), nudged.Cm = nudge(in.Cm);
  const auto moved = gradients_of(
      nudged, {nudge(w.wy), w.wf}, with_state, as_is, run);
  std::vector<double> out;
  for (size_t i = 0; i < moved.size(); ++i) out.push_back(norm_relative_error(moved[i], reference[i]));
  return out;
}

// Each gradient of ours within max(1e-2, 4 x its bf16 sensitivity) of float64's; one line printed.
void check_gradients(const std::string& label, const std::vector<at::Tensor>& ours,
                     const std::vector<at::Tensor>& reference, const std::vector<double>& sensitivity) {
  std::ostringstream line;
  line << "[kernels][ssd] " << label << ": gradients vs float64 (bf16 sensitivity)";
  std::vector<double> errors;
  for (size_t i = 0; i < ours.size(); ++i) {
    errors.push_back(norm_relative_error(ours[i], reference[i]));
    line << " " << kGradientNames[i] << " " << errors.back() << " (" << sensitivity[i] << ")";
  }
  std::cout << line.str() << std::endl;
  for (size_t i = 0; i < ours.size(); ++i) {
    INFO(label << ", gradient of " << kGradientNames[i]);
    CHECK(errors[i] <= std::max(1e-2, 4 * sensitivity[i]));
  }
}

}  // namespace

TEST_CASE("PRIME_SSM_CORE is fp32 or bf16 and anything else is refused by name", "[kernels]") {
  for (const char* value : {static_cast<const char*>(nullptr), "fp32"}) {
    const test::ScopedEnv core("PRIME_SSM_CORE", value);
    CHECK_FALSE(kernels::bf16_ssm_core());
  }
  {
    const test::ScopedEnv core("PRIME_SSM_CORE", "bf16");
    CHECK(kernels::bf16_ssm_core());
  }
  const test::ScopedEnv core("PRIME_SSM_CORE", "half");
  CHECK_THROWS_AS(kernels::bf16_ssm_core(), UserError);
  CHECK_THROWS_WITH(kernels::bf16_ssm_core(), Catch::Contains("PRIME_SSM_CORE=half"));
}

TEST_CASE("SSD bf16 forward: CPU tensors never take it", "[kernels][ssd]") {
  const at::Tensor x = at::randn({1, 70, 2, 64}).to(at::kBFloat16), delta = at::rand({1, 70, 2});
  CHECK_FALSE(kernels::ssd_chunk_bf16_apply(x, delta, -at::ones({2}), x, x, at::Tensor()));
}

TEST_CASE("SSD bf16 forward: where it applies on CUDA", "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  const auto bf16 = at::TensorOptions().device(cuda).dtype(at::kBFloat16);
  const at::Tensor x = at::randn({1, 70, 2, 64}, bf16), delta = at::rand({1, 70, 2}, bf16.dtype(at::kFloat));
  const at::Tensor A = -at::ones({2}, delta.options()), state = at::zeros({1, 2, 64, 64}, delta.options());
  CHECK(kernels::ssd_chunk_bf16_apply(x, delta, A, x, x, state));
  CHECK(kernels::ssd_chunk_bf16_apply(x.to(at::kFloat), delta, A, x.to(at::kFloat), x.to(at::kFloat), state));
  CHECK_FALSE(kernels::ssd_chunk_bf16_apply(x, delta, A, x.to(at::kFloat), x, state));  // mixed operands
  CHECK_FALSE(kernels::ssd_chunk_bf16_apply(x, delta.to(at::kBFloat16), A, x, x, state));
  const at::Tensor wide = at::randn({1, 70, 2, 48}, bf16);  // head dim not 32, 64 or 128
  CHECK_FALSE(kernels::ssd_chunk_bf16_apply(wide, delta, A, wide, wide, at::Tensor()));
  const at::Tensor narrow_b = at::randn({1, 70, 2, 32}, bf16);  // P != N
  CHECK_FALSE(kernels::ssd_chunk_bf16_apply(x, delta, A, narrow_b, narrow_b, at::Tensor()));
  const at::Tensor leaf = x.detach().requires_grad_(true);  // autograd records it: the backward serves
  CHECK(kernels::ssd_chunk_bf16_apply(leaf, delta, A, x, x, state));
  const kernels::ScopedKernelPolicy torch_ops(kernels::Policy::Torch);
  CHECK_FALSE(kernels::ssd_chunk_bf16_apply(x, delta, A, x, x, state));
}

TEST_CASE("SSD bf16 forward: y and the final state within bf16 accuracy of float64", "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const at::NoGradGuard no_grad;
  for (const auto& [B, T, H, D, with_state] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>>{
           {2, 200, 3, 64, true}, {1, 130, 2, 128, true}, {2, 192, 2, 32, false}, {3, 256, 2, 128, false},
           {1, 1, 2, 64, true}, {1, 65, 3, 32, true}, {1, 8300, 2, 128, true}}) {
    const Bf16SsdInputs in = rounded_inputs(B, T, H, D, 211 + T + D);
    const at::Tensor state = with_state ? in.state : at::Tensor();
    const auto reference = model::ssd_chunked(in.x, in.delta, in.A, in.Bm, in.Cm, state, 64);
    const auto on = [&](const at::Tensor& t, at::ScalarType type) { return t.to(cuda, type); };
    for (const at::ScalarType out : {at::kBFloat16, at::kFloat}) {
      const auto ours = kernels::ssd_chunked_bf16(
          on(in.x, at::kBFloat16), on(in.delta, at::kFloat), on(in.A, at::kFloat), on(in.Bm, at::kBFloat16),
          on(in.Cm, at::kBFloat16), with_state ? on(state, at::kFloat) : at::Tensor(), at::Tensor(), out);
      REQUIRE(ours.first.scalar_type() == out);
      REQUIRE(ours.second.scalar_type() == at::kFloat);
      const Errors e = errors_of(ours, reference);
      std::cout << "[kernels][ssd] bf16 forward B=" << B << " T=" << T << " H=" << H << " D=" << D
                << (with_state ? " with" : " without") << " initial state, y " << c10::toString(out)
                << ": vs float64 y " << e.y << " (worst element " << e.y_worst << " of the largest), state "
                << e.state << std::endl;
      CHECK(e.y <= 6e-3);
      CHECK(e.y_worst <= 1.5e-2);
      CHECK(e.state <= 6e-3);
    }
  }
}

TEST_CASE("SSD bf16 forward: restarts give each document's own scan", "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const at::NoGradGuard no_grad;
  const int64_t B = 2, T = 640, H = 2, D = 128;  // ten chunks
  const Bf16SsdInputs in = rounded_inputs(B, T, H, D, 307);
  at::Tensor starts = at::zeros({T / 64}, at::kBool);
  for (const int64_t chunk : {0, 1, 4, 5, 9}) starts[chunk].fill_(true);
  // chunk 0 flagged: the initial state is dropped as well
  const auto reference = model::ssd_chunked(in.x, in.delta, in.A, in.Bm, in.Cm, in.state, 64, starts);
  const auto ours =
      model::ssd_chunked(in.x.to(cuda, at::kBFloat16), in.delta.to(cuda, at::kFloat), in.A.to(cuda, at::kFloat),
                         in.Bm.to(cuda, at::kBFloat16), in.Cm.to(cuda, at::kBFloat16), in.state.to(cuda, at::kFloat), 64,
                         starts.to(cuda));
  REQUIRE(ours.first.scalar_type() == at::kBFloat16);
  const Errors e = errors_of(ours, reference);
  std::cout << "[kernels][ssd] bf16 forward, restarts at 5 of 10 chunks: vs float64 y " << e.y << " (worst element "
            << e.y_worst << "), state " << e.state << std::endl;
  CHECK(e.y <= 6e-3);
  CHECK(e.state <= 6e-3);
  // Without the flags the same inputs differ by far more than the rounding: the flags acted.
  const auto unflagged = model::ssd_chunked(in.x, in.delta, in.A, in.Bm, in.Cm, in.state, 64);
  CHECK(norm_relative_error(unflagged.first, reference.first) > 0.05);
}

TEST_CASE("SSD bf16 backward: every gradient within bf16 accuracy of float64", "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  for (const auto& [B, T, H, D, with_state] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>>{
           {2, 200, 3, 64, true}, {1, 130, 2, 128, true}, {2, 192, 2, 32, false}, {3, 256, 2, 128, false},
           {1, 1, 2, 64, true}, {1, 65, 3, 32, true}, {1, 1000, 2, 128, true}}) {
    const Bf16SsdInputs in = rounded_inputs(B, T, H, D, 601 + T + D);
    const Weights w = loss_weights(in, 17 + T);
    const auto torch_form = [](auto... operands) { return model::ssd_chunked(operands..., 64); };
    const auto reference = gradients_of(in, w, with_state, as_is, torch_form);
    const auto sensitivity = bf16_sensitivity(in, w, with_state, reference, torch_form);
    for (const at::ScalarType out : {at::kBFloat16, at::kFloat}) {
      const auto ours = gradients_of(in, w, with_state, bf16_form_leaf, [&](auto... operands) {
        return kernels::ssd_chunked_bf16(operands..., at::Tensor(), out);
      });
      std::ostringstream label;
      label << "bf16 backward B=" << B << " T=" << T << " H=" << H << " D=" << D << " y " << c10::toString(out);
      check_gradients(label.str(), ours, reference, sensitivity);
    }
  }
}

TEST_CASE("SSD bf16 backward: restarts stop the gradient at each document's start", "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const int64_t T = 640;  // ten chunks, flagged at 0, 1, 4, 5, 9 (chunk 0: the initial state gets no gradient)
  const Bf16SsdInputs in = rounded_inputs(2, T, 2, 128, 709);
  const Weights w = loss_weights(in, 23);
  at::Tensor starts = at::zeros({T / 64}, at::kBool);
  for (const int64_t chunk : {0, 1, 4, 5, 9}) starts[chunk].fill_(true);
  const auto torch_form = [&](auto... operands) { return model::ssd_chunked(operands..., 64, starts); };
  const auto reference = gradients_of(in, w, true, as_is, torch_form);
  const auto ours = gradients_of(in, w, true, bf16_form_leaf, [&](auto... operands) {
    return model::ssd_chunked(operands..., 64, starts.to(at::kCUDA));
  });
  // The initial state's gradient is exactly zero in both (chunk 0 is flagged): compare the rest.
  check_gradients("bf16 backward, restarts at 5 of 10 chunks", {ours.begin(), ours.begin() + 5},
                  {reference.begin(), reference.begin() + 5},
                  bf16_sensitivity(in, w, true, reference, torch_form));
  CHECK(ours[5].abs().max().item<double>() == 0.0);
  CHECK(reference[5].abs().max().item<double>() == 0.0);  // the flag at chunk 0 cuts the initial state off
}

TEST_CASE("PRIME_SSM_CORE=bf16: Mamba-2's fp32 calls take the bf16 form, fp32 out, gradients too",
          "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  const Bf16SsdInputs in = rounded_inputs(2, 300, 2, 64, 401);
  const Weights w = loss_weights(in, 29);
  const auto fp32_leaf = [&](int, const at::Tensor& t) { return t.to(cuda, at::kFloat); };
  const auto model_form = [](auto... operands) { return model::ssd_chunked(operands..., 256); };
  const auto run = [&](bool record) {
    std::vector<at::Tensor> leaves;
    for (const at::Tensor* t : {&in.x, &in.delta, &in.A, &in.Bm, &in.Cm, &in.state})
      leaves.push_back(t->to(cuda, at::kFloat).requires_grad_(record));
    auto [y, final_state] = model::ssd_chunked(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], 256);
    return std::make_pair(y.detach(), final_state.detach());
  };
  const test::FullFp32Matmuls full_fp32;
  const auto fp32 = run(false);
  const auto fp32_grads = gradients_of(in, w, true, fp32_leaf, model_form);
  const auto reference = model::ssd_chunked(in.x, in.delta, in.A, in.Bm, in.Cm, in.state, 256);
  const auto reference_grads = gradients_of(in, w, true, as_is, model_form);
  std::pair<at::Tensor, at::Tensor> bf16;
  std::vector<at::Tensor> bf16_grads;
  {
    const test::ScopedEnv core("PRIME_SSM_CORE", "bf16");
    bf16 = run(false);
    bf16_grads = gradients_of(in, w, true, fp32_leaf, model_form);
  }
  const double bf16_f64 = norm_relative_error(bf16.first, reference.first);
  const double bf16_fp32 = norm_relative_error(bf16.first, fp32.first);
  const double state_f64 = norm_relative_error(bf16.second, reference.second);
  std::cout << "[kernels][ssd] PRIME_SSM_CORE=bf16: y vs float64 " << bf16_f64 << " (fp32 path " << bf16_fp32
            << "), state " << state_f64 << std::endl;
  CHECK(bf16.first.scalar_type() == at::kFloat);
  CHECK(bf16_fp32 > 1e-4);  // the bf16 form ran: its rounding shows
  CHECK(bf16_f64 <= 6e-3);  // the inputs are bf16-exact: only the kernels' rounding
  CHECK(state_f64 <= 6e-3);
  check_gradients("PRIME_SSM_CORE=bf16 under autograd", bf16_grads, reference_grads,
                  bf16_sensitivity(in, w, true, reference_grads, model_form));
  for (size_t i = 0; i < fp32_grads.size(); ++i) CHECK(norm_relative_error(fp32_grads[i], reference_grads[i]) <= 1e-4);
  CHECK(norm_relative_error(bf16_grads[0], fp32_grads[0]) > 1e-4);  // the bf16 backward ran
}

TEST_CASE("SSD bf16 forward: small shapes for the sanitizer", "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const at::NoGradGuard no_grad;
  // Two chunks, the second partial; seven (the walk's three-buffer pipeline wraps around twice).
  for (const auto& [T, D] : std::vector<std::pair<int64_t, int64_t>>{{100, 32}, {400, 128}}) {
    const Bf16SsdInputs in = rounded_inputs(1, T, 2, D, 503 + D);
    const auto reference = model::ssd_chunked(in.x, in.delta, in.A, in.Bm, in.Cm, in.state, 64);
    const auto ours = kernels::ssd_chunked_bf16(in.x.to(cuda, at::kBFloat16), in.delta.to(cuda, at::kFloat),
                                                in.A.to(cuda, at::kFloat), in.Bm.to(cuda, at::kBFloat16),
                                                in.Cm.to(cuda, at::kBFloat16), in.state.to(cuda, at::kFloat),
                                                at::Tensor(), at::kFloat);
    const Errors e = errors_of(ours, reference);
    CHECK(e.y <= 6e-3);
    CHECK(e.state <= 6e-3);
  }
}

TEST_CASE("SSD bf16 backward: small shapes for the sanitizer", "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  for (const auto& [T, D] : std::vector<std::pair<int64_t, int64_t>>{{100, 32}, {400, 128}}) {
    const Bf16SsdInputs in = rounded_inputs(1, T, 2, D, 811 + D);
    const Weights w = loss_weights(in, 31);
    const auto torch_form = [](auto... operands) { return model::ssd_chunked(operands..., 64); };
    const auto reference = gradients_of(in, w, true, as_is, torch_form);
    const auto ours = gradients_of(in, w, true, bf16_form_leaf, [](auto... operands) {
      return kernels::ssd_chunked_bf16(operands..., at::Tensor(), at::kFloat);
    });
    check_gradients("bf16 backward, sanitizer shape T=" + std::to_string(T) + " D=" + std::to_string(D), ours,
                    reference, bf16_sensitivity(in, w, true, reference, torch_form));
  }
}
