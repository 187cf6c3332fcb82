// kernels/ssd_chunk's bf16 forward (ssd_chunked_bf16): Mamba-2's chunked SSD scan on bf16 x, B, C
// against the torch-ops form in float64 on the same bf16-rounded inputs (what is measured is the
// kernels' own rounding), outputs poisoned with NaN first; where it applies; PRIME_SSM_CORE.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <iostream>
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
  const at::Tensor leaf = x.detach().requires_grad_(true);  // autograd would record it
  CHECK_FALSE(kernels::ssd_chunk_bf16_apply(leaf, delta, A, x, x, state));
  {
    const at::NoGradGuard no_grad;
    CHECK(kernels::ssd_chunk_bf16_apply(leaf, delta, A, x, x, state));
  }
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

TEST_CASE("PRIME_SSM_CORE=bf16: Mamba-2's fp32 calls without autograd take the bf16 forward, fp32 out",
          "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  const Bf16SsdInputs in = rounded_inputs(2, 300, 2, 64, 401);
  const auto run = [&](bool record) {
    std::vector<at::Tensor> leaves;
    for (const at::Tensor* t : {&in.x, &in.delta, &in.A, &in.Bm, &in.Cm, &in.state})
      leaves.push_back(t->to(cuda, at::kFloat).requires_grad_(record));
    auto [y, final_state] = model::ssd_chunked(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], 256);
    return std::make_pair(y.detach(), final_state.detach());
  };
  const test::FullFp32Matmuls full_fp32;
  const auto fp32 = run(false);
  const auto reference = model::ssd_chunked(in.x, in.delta, in.A, in.Bm, in.Cm, in.state, 256);
  std::pair<at::Tensor, at::Tensor> bf16, under_autograd;
  {
    const test::ScopedEnv core("PRIME_SSM_CORE", "bf16");
    bf16 = run(false);
    under_autograd = run(true);  // records a gradient: the fp32 kernels, as without the variable
  }
  const double bf16_f64 = norm_relative_error(bf16.first, reference.first);
  const double bf16_fp32 = norm_relative_error(bf16.first, fp32.first);
  const double state_f64 = norm_relative_error(bf16.second, reference.second);
  const double autograd_f64 = norm_relative_error(under_autograd.first, reference.first);
  std::cout << "[kernels][ssd] PRIME_SSM_CORE=bf16: y vs float64 " << bf16_f64 << " (fp32 path " << bf16_fp32
            << "), state " << state_f64 << "; under autograd vs float64 " << autograd_f64 << std::endl;
  CHECK(bf16.first.scalar_type() == at::kFloat);
  CHECK(bf16_fp32 > 1e-4);  // the bf16 form ran: its rounding shows
  CHECK(bf16_f64 <= 6e-3);  // the inputs are bf16-exact: only the kernels' rounding
  CHECK(state_f64 <= 6e-3);
  CHECK(autograd_f64 <= 1e-4);
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
