// kernels/rms_norm: the fused RMSNorm and residual add + RMSNorm, reached through model::rms_norm
// and model::add_rms_norm, against a float64 reference on the CPU (from the same rounded inputs)
// and against the torch form on CUDA (policy Torch); rows of large and tiny magnitude, short
// (warp) and long (block) rows, 16-byte and scalar accesses, non-contiguous inputs; outputs
// poisoned with NaN first. Calls autograd records take the training form (rms_norm_train): its
// output and the gradients of x and the weight against float64 autograd and the torch form's.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>

#include <algorithm>
#include <array>
#include <iostream>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/rms_norm/rms_norm.h"
#include "model/rms_norm.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

constexpr double kEps = 1e-6;

double tolerance(at::ScalarType type) { return type == at::kFloat ? 1e-6 : 1e-2; }

// Rows of randn scaled by 1, 1e-3 (mean square near eps) and 300 in turn, as float64 values
// representable in `type` (so every path starts from the same numbers). randn is never zero.
at::Tensor input_rows(int64_t rows, int64_t D, at::ScalarType type) {
  const at::Tensor scales =
      at::tensor(std::vector<double>{1.0, 1e-3, 300.0}, at::kDouble).repeat({(rows + 2) / 3}).narrow(0, 0, rows);
  return (at::randn({rows, D}, at::kDouble) * scales.unsqueeze(1)).to(type).to(at::kDouble);
}

at::Tensor input_weight(int64_t D, at::ScalarType type) {
  return (1 + 0.3 * at::randn({D}, at::kDouble)).to(type).to(at::kDouble);
}

// model::rms_norm in float64: x rsqrt(mean(x^2) + eps), times the weight.
at::Tensor reference_rms_norm(const at::Tensor& x, const at::Tensor& weight) {
  const at::Tensor xd = x.to(at::kCPU, at::kDouble);
  return weight.to(at::kCPU, at::kDouble) * xd * at::rsqrt(xd.pow(2).mean({-1}, true) + kEps);
}

// Worst over rows of max |got - want| / max |want| (per row, so tiny rows count as much as large).
double row_relative_error(const at::Tensor& got, const at::Tensor& want) {
  const int64_t D = want.size(-1);
  const at::Tensor a = got.to(at::kCPU, at::kDouble).reshape({-1, D});
  const at::Tensor b = want.to(at::kCPU, at::kDouble).reshape({-1, D});
  return ((a - b).abs().amax(1) / b.abs().amax(1).clamp_min(1e-300)).max().item<double>();
}

std::string describe(at::ScalarType type, at::IntArrayRef sizes, const char* what) {
  std::ostringstream text;
  text << what << " " << c10::toString(type) << " " << sizes;
  return text.str();
}

// model::rms_norm on CUDA with the kernel (it must apply) against float64 and the torch form.
void check_rms_norm(const at::Tensor& x, const at::Tensor& weight, const std::string& what) {
  INFO(what);
  REQUIRE(kernels::rms_norm_apply(x, weight));
  const at::Tensor got = model::rms_norm(x, weight, kEps);
  at::Tensor torch_form;
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    REQUIRE_FALSE(kernels::rms_norm_apply(x, weight));
    torch_form = model::rms_norm(x, weight, kEps);
  }
  REQUIRE(got.sizes() == x.sizes());
  REQUIRE(got.scalar_type() == x.scalar_type());
  const double vs_reference = row_relative_error(got, reference_rms_norm(x, weight));
  const double vs_torch = row_relative_error(got, torch_form);
  std::cout << "[kernels][rms_norm] " << what << ": vs float64 " << vs_reference << ", vs torch form "
            << vs_torch << "\n";
  CHECK(vs_reference <= tolerance(x.scalar_type()));
  CHECK(vs_torch <= tolerance(x.scalar_type()));
}

const std::array<at::ScalarType, 3> kTypes = {at::kFloat, at::kBFloat16, at::kHalf};

}  // namespace

TEST_CASE("rms_norm kernel: never applies to CPU tensors, where add_rms_norm is hidden + mixed and its rms_norm",
          "[kernels][rms_norm]") {
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16, at::kDouble}) {
    INFO(c10::toString(type));
    const at::Tensor hidden = input_rows(10, 24, type).to(type).reshape({2, 5, 24});
    const at::Tensor mixed = input_rows(10, 24, type).to(type).reshape({2, 5, 24});
    const at::Tensor weight = input_weight(24, type).to(type);
    CHECK_FALSE(kernels::rms_norm_apply(hidden, weight));
    CHECK_FALSE(kernels::add_rms_norm_apply(hidden, mixed, weight));
    CHECK_FALSE(kernels::rms_norm_train_apply(hidden.clone().requires_grad_(true), weight));
    const auto [sum, normed] = model::add_rms_norm(hidden, mixed, weight, kEps);
    CHECK(at::equal(sum, hidden + mixed));
    CHECK(at::equal(normed, model::rms_norm(hidden + mixed, weight, kEps)));
    // The torch form itself against float64 (the reference the GPU tests use).
    CHECK(row_relative_error(normed, reference_rms_norm(sum, weight)) <= tolerance(type));
  }
}

TEST_CASE("rms_norm kernel: equals float64 and the torch form for warp and block rows, every dtype",
          "[kernels][gpu][rms_norm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::manual_seed(17);
  const at::Device cuda(at::kCUDA);
  // D = 128 (head norms) and 40 go to lane groups, 4096 and 5120 to a block per row; 37 and 4099
  // take scalar accesses (4099 > 4 x 1024 packs: the tail re-read), 16384 the largest block.
  for (const at::ScalarType type : kTypes) {
    for (const int64_t D : {128, 4096, 5120, 40, 37}) {
      for (const int64_t rows : {1, 3, 1000}) {
        const at::Tensor x = input_rows(rows, D, type).to(cuda, type);
        check_rms_norm(x, input_weight(D, type).to(cuda, type), describe(type, x.sizes(), "rows"));
      }
    }
    for (const int64_t D : {4099, 16384, 16383}) {
      const at::Tensor x = input_rows(5, D, type).to(cuda, type);
      check_rms_norm(x, input_weight(D, type).to(cuda, type), describe(type, x.sizes(), "long rows"));
    }
    // Non-contiguous x: a transposed [D, rows] and a column slice (offset by one element).
    const at::Tensor transposed = input_rows(128, 300, type).to(cuda, type).t();
    check_rms_norm(transposed, input_weight(128, type).to(cuda, type),
                   describe(type, transposed.sizes(), "transposed"));
    const at::Tensor sliced = input_rows(7, 4097, type).to(cuda, type).narrow(1, 1, 4096);
    check_rms_norm(sliced, input_weight(4096, type).to(cuda, type), describe(type, sliced.sizes(), "sliced"));
    // Contiguous but starting one element into its storage: not 16-byte aligned, scalar accesses.
    const at::Tensor offset =
        input_rows(1, 1 + 9 * 4096, type).to(cuda, type).view({-1}).narrow(0, 1, 9 * 4096).view({9, 4096});
    check_rms_norm(offset, input_weight(4096, type).to(cuda, type), describe(type, offset.sizes(), "offset"));
    // A q_norm input: [B,T,H,D], a view of the projection's output.
    const at::Tensor heads = input_rows(2 * 3 * 4, 128, type).to(cuda, type).view({2, 3, 4, 128});
    check_rms_norm(heads, input_weight(128, type).to(cuda, type), describe(type, heads.sizes(), "heads"));
  }
}

TEST_CASE("add_rms_norm kernel: the sum equals hidden + mixed bit for bit, the norm float64 and the torch form",
          "[kernels][gpu][rms_norm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::manual_seed(19);
  const at::Device cuda(at::kCUDA);
  for (const at::ScalarType type : kTypes) {
    for (const auto& [rows, D] : std::vector<std::pair<int64_t, int64_t>>{
             {1, 4096}, {3, 128}, {1000, 4096}, {1000, 5120}, {3, 40}, {3, 37}, {5, 4099}, {1, 16384}}) {
      const std::string what = describe(type, {rows, D}, "add");
      INFO(what);
      const at::Tensor hidden = input_rows(rows, D, type).to(cuda, type).reshape({1, rows, D});
      const at::Tensor mixed = input_rows(rows, D, type).to(cuda, type).reshape({1, rows, D});
      const at::Tensor weight = input_weight(D, type).to(cuda, type);
      REQUIRE(kernels::add_rms_norm_apply(hidden, mixed, weight));
      const auto [sum, normed] = model::add_rms_norm(hidden, mixed, weight, kEps);
      at::Tensor torch_sum, torch_normed;
      {
        const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
        REQUIRE_FALSE(kernels::add_rms_norm_apply(hidden, mixed, weight));
        std::tie(torch_sum, torch_normed) = model::add_rms_norm(hidden, mixed, weight, kEps);
      }
      REQUIRE(sum.sizes() == hidden.sizes());
      REQUIRE(normed.sizes() == hidden.sizes());
      CHECK(at::equal(sum, torch_sum));
      // The reference normalises the rounded sum, as the kernel must.
      const at::Tensor rounded_sum = (hidden.cpu() + mixed.cpu()).to(at::kDouble);
      const double vs_reference = row_relative_error(normed, reference_rms_norm(rounded_sum, weight));
      const double vs_torch = row_relative_error(normed, torch_normed);
      std::cout << "[kernels][rms_norm] " << what << ": normed vs float64 " << vs_reference
                << ", vs torch form " << vs_torch << "\n";
      CHECK(vs_reference <= tolerance(type));
      CHECK(vs_torch <= tolerance(type));
    }
  }
  // A non-contiguous mixed (made contiguous by the op).
  const at::Tensor hidden = input_rows(64, 256, at::kBFloat16).to(cuda, at::kBFloat16);
  const at::Tensor mixed = input_rows(256, 64, at::kBFloat16).to(cuda, at::kBFloat16).t();
  const at::Tensor weight = input_weight(256, at::kBFloat16).to(cuda, at::kBFloat16);
  const auto [sum, normed] = model::add_rms_norm(hidden, mixed, weight, kEps);
  CHECK(at::equal(sum, hidden + mixed));
  CHECK(row_relative_error(normed, reference_rms_norm(sum, weight)) <= tolerance(at::kBFloat16));
}

namespace {

struct NormGradients {
  at::Tensor y, dx, dw;  // dw undefined where the weight needs no gradient
  std::string node;      // the output's autograd node
};

// y = model::rms_norm(x, weight) under autograd and its backward from dy, on copies of x and the
// weight that require grad (the weight only when weight_grad), in x's dtype and device.
NormGradients norm_gradients(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& dy, bool weight_grad) {
  const at::AutoGradMode grad_mode(true);
  const at::Tensor xg = x.detach().clone().requires_grad_(true);
  const at::Tensor wg = weight.detach().clone().requires_grad_(weight_grad);
  NormGradients result;
  result.y = model::rms_norm(xg, wg, kEps);
  result.node = result.y.grad_fn() ? result.y.grad_fn()->name() : "";
  result.y.backward(dy);
  result.dx = xg.grad();
  result.dw = wg.grad();
  return result;
}

// Worst over the rows of max |got - want| / max |want|, or the whole tensor's when 1-D.
double gradient_error(const at::Tensor& got, const at::Tensor& want) {
  return want.dim() == 1 ? row_relative_error(got.unsqueeze(0), want.unsqueeze(0)) : row_relative_error(got, want);
}

// The training kernel (it must apply under autograd) against float64 autograd on the CPU (from
// the same rounded inputs) and the torch form's autograd on CUDA.
void check_norm_gradients(const at::Tensor& x, const at::Tensor& weight, bool weight_grad, const std::string& what) {
  INFO(what << (weight_grad ? ", weight trained" : ", weight frozen"));
  const at::Tensor dy = input_rows(x.numel() / x.size(-1), x.size(-1), x.scalar_type())
                            .reshape(x.sizes())
                            .to(x.device(), x.scalar_type());
  {
    const at::AutoGradMode grad_mode(true);
    REQUIRE(kernels::rms_norm_train_apply(x.detach().requires_grad_(true), weight));
  }
  const NormGradients ours = norm_gradients(x, weight, dy, weight_grad);
  CHECK(ours.node.find("RmsNormKernel") != std::string::npos);
  NormGradients torch_form;
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    torch_form = norm_gradients(x, weight, dy, weight_grad);
  }
  const NormGradients reference = norm_gradients(x.to(at::kCPU, at::kDouble), weight.to(at::kCPU, at::kDouble),
                                                 dy.to(at::kCPU, at::kDouble), weight_grad);
  REQUIRE(ours.dx.defined());
  REQUIRE(ours.dx.sizes() == x.sizes());
  REQUIRE(ours.dx.scalar_type() == x.scalar_type());
  REQUIRE(ours.dw.defined() == weight_grad);
  // The gradients round where the torch form's do (dy w in the dtype, dx and dw cast to it), so
  // bf16 and fp16 are held to the dtype's bound and fp32 to a few of its ulps.
  const double bound = x.scalar_type() == at::kFloat ? 1e-5 : 1e-2;
  const double y_error = row_relative_error(ours.y, torch_form.y);
  const double dx_reference = gradient_error(ours.dx, reference.dx), dx_torch = gradient_error(ours.dx, torch_form.dx);
  std::cout << "[kernels][rms_norm] train " << what << ": dx vs float64 " << dx_reference << ", vs torch form "
            << dx_torch;
  CHECK(y_error <= tolerance(x.scalar_type()));
  CHECK(dx_reference <= bound);
  CHECK(dx_torch <= bound);
  if (weight_grad) {
    const double dw_reference = gradient_error(ours.dw, reference.dw), dw_torch = gradient_error(ours.dw, torch_form.dw);
    std::cout << "; dw vs float64 " << dw_reference << ", vs torch form " << dw_torch;
    CHECK(dw_reference <= bound);
    CHECK(dw_torch <= bound);
  }
  std::cout << "\n";
}

}  // namespace

TEST_CASE("rms_norm training kernel: output and gradients of x and the weight equal float64 and the torch form",
          "[kernels][gpu][rms_norm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::manual_seed(23);
  const at::Device cuda(at::kCUDA);
  for (const at::ScalarType type : kTypes) {
    // Lane groups (128, 40, 37: scalar accesses) and blocks (4096, 5120; 4099: the re-read tail).
    for (const int64_t D : {128, 4096, 5120, 40, 37, 4099}) {
      for (const int64_t rows : {1, 3, 700}) {
        const at::Tensor x = input_rows(rows, D, type).to(cuda, type);
        const at::Tensor weight = input_weight(D, type).to(cuda, type);
        check_norm_gradients(x, weight, rows != 3, describe(type, x.sizes(), "rows"));
      }
    }
    // A transposed x (made contiguous by the op) and a [B,T,H,D] view.
    const at::Tensor transposed = input_rows(128, 300, type).to(cuda, type).t();
    check_norm_gradients(transposed, input_weight(128, type).to(cuda, type), true,
                         describe(type, transposed.sizes(), "transposed"));
    const at::Tensor heads = input_rows(2 * 3 * 4, 128, type).to(cuda, type).view({2, 3, 4, 128});
    check_norm_gradients(heads, input_weight(128, type).to(cuda, type), true, describe(type, heads.sizes(), "heads"));
  }
  // Only the weight records a gradient: x's is not computed.
  const at::AutoGradMode grad_mode(true);
  const at::Tensor x = input_rows(4, 256, at::kFloat).to(cuda, at::kFloat);
  const at::Tensor weight = input_weight(256, at::kFloat).to(cuda, at::kFloat).requires_grad_(true);
  REQUIRE(kernels::rms_norm_train_apply(x, weight));
  model::rms_norm(x, weight, kEps).sum().backward();
  REQUIRE(weight.grad().defined());
  CHECK(at::isfinite(weight.grad()).all().item<bool>());
}

TEST_CASE("rms_norm kernel: autograd calls take the training form and so do fp32 head norms but not under policy Torch",
          "[kernels][gpu][rms_norm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const auto options = at::TensorOptions().device(at::kCUDA);
  const at::Tensor x = at::randn({4, 64}, options).requires_grad_(true);
  const at::Tensor residual = at::randn({4, 64}, options);
  const at::Tensor weight = at::randn({64}, options);
  {
    const at::AutoGradMode grad_mode(true);
    CHECK_FALSE(kernels::rms_norm_apply(x, weight));
    CHECK_FALSE(kernels::add_rms_norm_apply(residual, x, weight));
    CHECK_FALSE(kernels::rms_norm_apply(residual, weight.clone().requires_grad_(true)));
    CHECK(kernels::rms_norm_apply(residual, weight));
    CHECK(kernels::rms_norm_train_apply(x, weight));
    CHECK(kernels::rms_norm_train_apply(residual, weight.clone().requires_grad_(true)));
    CHECK_FALSE(kernels::rms_norm_train_apply(residual, weight));
    // The training form runs and builds a graph that reaches x.
    const at::Tensor y = model::rms_norm(x, weight, kEps);
    CHECK(y.grad_fn()->name().find("RmsNormKernel") != std::string::npos);
    CHECK(y.requires_grad());
    CHECK(y.grad_fn() != nullptr);
    const auto [sum, normed] = model::add_rms_norm(residual, x, weight, kEps);
    CHECK(normed.grad_fn() != nullptr);
    CHECK(sum.grad_fn() != nullptr);
  }
  {
    at::NoGradGuard no_grad;
    CHECK(kernels::rms_norm_apply(x, weight));
    CHECK(kernels::add_rms_norm_apply(residual, x, weight));
    CHECK_FALSE(kernels::rms_norm_apply(x.to(at::kDouble), weight.to(at::kDouble)));
    CHECK_FALSE(kernels::rms_norm_apply(x.to(at::kBFloat16), weight));  // weight of another dtype
    CHECK_FALSE(kernels::rms_norm_apply(x, weight.narrow(0, 0, 32)));
    CHECK_FALSE(kernels::rms_norm_apply(at::randn({2, 16385}, options), at::randn({16385}, options)));
    CHECK_FALSE(kernels::add_rms_norm_apply(x, residual.narrow(0, 0, 2), weight));
    CHECK_FALSE(kernels::rms_norm_train_apply(x, weight));
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    CHECK_FALSE(kernels::rms_norm_apply(x, weight));
  }
  {
    // The mixers' fp32 head norms take the same kernels (rms_norm's math in fp32): output and
    // gradient as the torch form's; a bf16 head norm keeps its own form (normalised in bf16).
    const at::AutoGradMode grad_mode(true);
    const at::Tensor heads = at::randn({2, 3, 4, 64}, options).requires_grad_(true);
    const at::Tensor y = model::head_rms_norm(heads, weight, kEps);
    CHECK(y.grad_fn()->name().find("RmsNormKernel") != std::string::npos);
    const at::Tensor dy = at::randn(y.sizes(), options);
    const at::Tensor dx = torch::autograd::grad({y}, {heads}, {dy})[0];
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    const at::Tensor y_torch = model::head_rms_norm(heads, weight, kEps);
    const at::Tensor dx_torch = torch::autograd::grad({y_torch}, {heads}, {dy})[0];
    CHECK(row_relative_error(y, y_torch) <= 1e-6);
    CHECK(row_relative_error(dx, dx_torch) <= 1e-6);
  }
  {
    const at::AutoGradMode grad_mode(true);
    const at::Tensor heads = at::randn({2, 3, 64}, options.dtype(at::kBFloat16)).requires_grad_(true);
    const at::Tensor y = model::head_rms_norm(heads, weight.to(at::kBFloat16), kEps);
    CHECK(y.grad_fn()->name().find("RmsNormKernel") == std::string::npos);
  }
  const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
  const at::AutoGradMode grad_mode(true);
  CHECK_FALSE(kernels::rms_norm_train_apply(x, weight));
  CHECK(model::rms_norm(x, weight, kEps).grad_fn()->name().find("RmsNormKernel") == std::string::npos);
}
