// kernels/gated_norm: the SSM mixers' gated output norms (GDN and GKA: normalise, then gate;
// Mamba-2: gate, then normalise), reached through model::gated_rms_norm and
// model::rms_norm_of_gated. Output and the gradients of x, the gate and the weight against a
// float64 reference written here (from the same rounded inputs, CPU autograd) and against the torch
// forms on CUDA (policy Torch); fp32 and bf16 gates and outputs, a weight per head or shared,
// row lengths from 1 to 256, strided x and gate (slices of wider tensors), outputs poisoned.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>

#include <algorithm>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/gated_norm/gated_norm.h"
#include "model/rms_norm.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

constexpr double kEps = 1e-6;

// The norm written out in float64 from its definition: AfterNorm w x s(x) silu(g), BeforeNorm
// w u s(u) with u = x silu(g), s(v) = 1 / sqrt(mean(v^2) + eps) per row of D. x, g [..., H, D];
// w [D] or [H * D].
at::Tensor reference(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w, bool gate_first) {
  const at::Tensor silu = g / (1 + at::exp(-g));
  const at::Tensor u = gate_first ? x * silu : x;
  const at::Tensor normed = u / at::sqrt(u.pow(2).mean({-1}, true) + kEps);
  const at::Tensor weight = w.numel() == x.size(-1) ? w : w.view({x.size(-2), x.size(-1)});
  return gate_first ? normed * weight : normed * weight * silu;
}

at::Tensor model_norm(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w, bool gate_first,
                      at::ScalarType out_type) {
  return gate_first ? model::rms_norm_of_gated(x, g, w, kEps, out_type)
                    : model::gated_rms_norm(x, g, w, kEps, out_type);
}

struct Result {
  at::Tensor y, dx, dg, dw;
  std::string node;
};

// Forward and backward with dy; every input a fresh leaf requiring grad.
Result run(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w, bool gate_first, at::ScalarType out_type,
           const at::Tensor& dy, bool reference_form) {
  const at::AutoGradMode grad_mode(true);
  const at::Tensor xl = x.detach().requires_grad_(true), gl = g.detach().requires_grad_(true),
                   wl = w.detach().requires_grad_(true);
  Result out;
  out.y = reference_form ? reference(xl, gl, wl, gate_first) : model_norm(xl, gl, wl, gate_first, out_type);
  if (out.y.grad_fn()) out.node = out.y.grad_fn()->name();
  out.y.backward(dy.to(out.y.scalar_type()));
  out.dx = xl.grad();
  out.dg = gl.grad();
  out.dw = wl.grad();
  return out;
}

// x [..., H, D] fp32 with rows of mixed scale (1, 1e-3, 30), gate of gate_type, weight around 1.
struct Inputs {
  at::Tensor x, g, w;
};

Inputs make_inputs(std::vector<int64_t> sizes, bool per_head, at::ScalarType gate_type, const at::Device& device) {
  const int64_t D = sizes.back(), H = sizes[sizes.size() - 2];
  at::Tensor x = at::randn(sizes, at::kDouble);
  const at::Tensor rows = x.view({-1, D});
  const at::Tensor scales = at::tensor(std::vector<double>{1.0, 1e-3, 30.0}, at::kDouble)
                                .repeat({(rows.size(0) + 2) / 3})
                                .narrow(0, 0, rows.size(0));
  x = (rows * scales.unsqueeze(1)).view(sizes);
  Inputs in;
  in.x = x.to(device, at::kFloat);
  in.g = (2 * at::randn(sizes, at::kDouble)).to(device, gate_type);
  in.w = (1 + 0.3 * at::randn({per_head ? H * D : D}, at::kDouble)).to(device, at::kFloat);
  return in;
}

std::string describe(const Inputs& in, bool gate_first, at::ScalarType out_type, const char* what) {
  std::ostringstream text;
  text << what << (gate_first ? " gate-then-norm" : " norm-then-gate") << " x " << in.x.sizes() << " gate "
       << c10::toString(in.g.scalar_type()) << " weight " << in.w.sizes() << " out " << c10::toString(out_type);
  return text.str();
}

void check_kernel(const Inputs& in, bool gate_first, at::ScalarType out_type, const std::string& what) {
  INFO(what);
  REQUIRE(kernels::gated_norm_apply(in.x, in.g, in.w, out_type));
  const at::Tensor dy = at::randn(in.x.sizes(), at::kDouble).to(in.x.device(), out_type);
  const Result ours = run(in.x, in.g, in.w, gate_first, out_type, dy, false);
  CHECK(ours.node.find("GatedNormKernel") != std::string::npos);
  Result torch_form;
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    REQUIRE_FALSE(kernels::gated_norm_apply(in.x, in.g, in.w, out_type));
    torch_form = run(in.x, in.g, in.w, gate_first, out_type, dy, false);
  }
  const auto cpu64 = [](const at::Tensor& t) { return t.to(at::kCPU, at::kDouble); };
  const Result want = run(cpu64(in.x), cpu64(in.g), cpu64(in.w), gate_first, at::kDouble, cpu64(dy), true);
  REQUIRE(ours.y.sizes() == in.x.sizes());
  REQUIRE(ours.y.scalar_type() == out_type);
  REQUIRE(ours.dx.scalar_type() == at::kFloat);
  REQUIRE(ours.dg.scalar_type() == in.g.scalar_type());
  REQUIRE(ours.dw.scalar_type() == at::kFloat);
  // fp32 results to a few ulps; a bf16 output or gate gradient to bf16's rounding (2^-8).
  const double y_bound = out_type == at::kFloat ? 2e-6 : 4e-3;
  const double g_bound = in.g.scalar_type() == at::kFloat ? 1e-5 : 4e-3;
  const double y64 = test::norm_relative_error(ours.y, want.y), y_torch = test::norm_relative_error(ours.y, torch_form.y);
  const double dx64 = test::norm_relative_error(ours.dx, want.dx), dx_torch = test::norm_relative_error(ours.dx, torch_form.dx);
  const double dg64 = test::norm_relative_error(ours.dg, want.dg), dg_torch = test::norm_relative_error(ours.dg, torch_form.dg);
  const double dw64 = test::norm_relative_error(ours.dw, want.dw), dw_torch = test::norm_relative_error(ours.dw, torch_form.dw);
  std::cout << "[kernels][gated_norm] " << what << ": vs float64 y " << y64 << " dx " << dx64 << " dgate " << dg64
            << " dweight " << dw64 << "; vs torch form y " << y_torch << " dx " << dx_torch << " dgate " << dg_torch
            << " dweight " << dw_torch << "\n";
  CHECK(y64 <= y_bound);
  CHECK(y_torch <= y_bound);
  // dy is rounded to out_type for every path alike, so the gradients keep fp32's accuracy except
  // where they are rounded to a bf16 gate.
  CHECK(dx64 <= 1e-5);
  CHECK(dx_torch <= 1e-5);
  CHECK(dg64 <= g_bound);
  CHECK(dg_torch <= g_bound);
  CHECK(dw64 <= 1e-5);
  CHECK(dw_torch <= 1e-5);
}

}  // namespace

TEST_CASE("gated norms: the torch forms equal the float64 definition and the kernels never apply on the CPU",
          "[kernels][gated_norm]") {
  at::manual_seed(41);
  for (const bool gate_first : {false, true}) {
    for (const at::ScalarType out_type : {at::kFloat, at::kBFloat16}) {
      const Inputs in = make_inputs({3, 5, 4, 32}, gate_first, at::kFloat, at::Device(at::kCPU));
      INFO(describe(in, gate_first, out_type, "cpu"));
      CHECK_FALSE(kernels::gated_norm_apply(in.x, in.g, in.w, out_type));
      const at::Tensor got = model_norm(in.x, in.g, in.w, gate_first, out_type);
      CHECK(got.scalar_type() == out_type);
      const at::Tensor want = reference(in.x.to(at::kDouble), in.g.to(at::kDouble), in.w.to(at::kDouble), gate_first);
      CHECK(test::norm_relative_error(got, want) <= (out_type == at::kFloat ? 2e-6 : 4e-3));
    }
  }
  // Without out_type: the compute dtype (GDN/GKA) or x's (Mamba-2).
  const Inputs in = make_inputs({2, 3, 16}, false, at::kBFloat16, at::Device(at::kCPU));
  CHECK(model::gated_rms_norm(in.x, in.g, in.w, kEps).scalar_type() == at::kFloat);
  CHECK(model::rms_norm_of_gated(in.x, in.g.to(at::kFloat), at::ones({48}), kEps).scalar_type() == at::kFloat);
}

TEST_CASE("gated_norm kernels: output and gradients of x the gate and the weight equal float64 and the torch forms",
          "[kernels][gpu][gated_norm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::manual_seed(43);
  const at::Device cuda(at::kCUDA);
  for (const bool gate_first : {false, true}) {
    for (const at::ScalarType gate_type : {at::kFloat, at::kBFloat16}) {
      for (const at::ScalarType out_type : {at::kFloat, at::kBFloat16}) {
        // D = 128 (the 8B models), 256 (the longest row), 64, 40 and 1 (partial and single-lane
        // rows); 1 to 2 x 37 x 4 rows.
        for (const int64_t D : {128, 256, 64, 40, 1}) {
          const Inputs in = make_inputs({2, 37, 4, D}, gate_first, gate_type, cuda);
          check_kernel(in, gate_first, out_type, describe(in, gate_first, out_type, "rows"));
        }
        const Inputs one = make_inputs({1, 1, 128}, !gate_first, gate_type, cuda);
        check_kernel(one, gate_first, out_type, describe(one, gate_first, out_type, "one row"));
      }
    }
  }
  // Strided operands as the mixers pass them: Mamba-2's gate is a slice of the in-projection's
  // output ([B, T, W] narrowed, viewed as [B, T, H, D]); x a slice too, and a transposed [T, B].
  for (const bool gate_first : {false, true}) {
    const Inputs base = make_inputs({3, 11, 4, 64}, gate_first, at::kFloat, cuda);
    const at::Tensor wide_gate = at::randn({3, 11, 4 * 64 + 100}, at::TensorOptions().device(cuda));
    Inputs sliced = base;
    sliced.g = wide_gate.narrow(2, 50, 4 * 64).view({3, 11, 4, 64});
    sliced.x = at::randn({3, 11, 4 * 64 + 8}, at::TensorOptions().device(cuda)).narrow(2, 8, 4 * 64).view({3, 11, 4, 64});
    REQUIRE_FALSE(sliced.g.is_contiguous());
    check_kernel(sliced, gate_first, at::kBFloat16, describe(sliced, gate_first, at::kBFloat16, "sliced"));
    Inputs transposed = base;
    transposed.x = base.x.transpose(0, 1);
    transposed.g = base.g.transpose(0, 1);
    check_kernel(transposed, gate_first, at::kFloat, describe(transposed, gate_first, at::kFloat, "transposed"));
  }
}

TEST_CASE("gated_norm kernels: which operands they serve and a frozen weight", "[kernels][gpu][gated_norm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const auto options = at::TensorOptions().device(at::kCUDA);
  const at::Tensor x = at::randn({5, 4, 128}, options), gate = at::randn({5, 4, 128}, options);
  const at::Tensor weight = at::randn({128}, options);
  CHECK(kernels::gated_norm_apply(x, gate, weight, at::kBFloat16));
  CHECK(kernels::gated_norm_apply(x, gate.to(at::kBFloat16), weight.to(at::kBFloat16), at::kFloat));
  CHECK(kernels::gated_norm_apply(x, gate, at::randn({512}, options), at::kFloat));  // [H * D]
  CHECK_FALSE(kernels::gated_norm_apply(x.to(at::kDouble), gate, weight, at::kFloat));
  CHECK_FALSE(kernels::gated_norm_apply(x.to(at::kBFloat16), gate, weight, at::kFloat));
  CHECK_FALSE(kernels::gated_norm_apply(x, gate.narrow(0, 0, 4), weight, at::kFloat));
  CHECK_FALSE(kernels::gated_norm_apply(x, gate, at::randn({64}, options), at::kFloat));
  CHECK_FALSE(kernels::gated_norm_apply(x, gate, weight, at::kHalf));
  CHECK_FALSE(kernels::gated_norm_apply(at::randn({5, 2, 257}, options), at::randn({5, 2, 257}, options),
                                        at::randn({257}, options), at::kFloat));
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    CHECK_FALSE(kernels::gated_norm_apply(x, gate, weight, at::kFloat));
  }
  // A frozen weight: x's and the gate's gradients only.
  const at::AutoGradMode grad_mode(true);
  const at::Tensor xl = x.clone().requires_grad_(true), gl = gate.clone().requires_grad_(true);
  const at::Tensor y = model::gated_rms_norm(xl, gl, weight, kEps, at::kBFloat16);
  REQUIRE(y.grad_fn() != nullptr);
  CHECK(y.grad_fn()->name().find("GatedNormKernel") != std::string::npos);
  y.to(at::kFloat).sum().backward();
  CHECK(at::isfinite(xl.grad()).all().item<bool>());
  CHECK(at::isfinite(gl.grad()).all().item<bool>());
}

TEST_CASE("gated_norm kernels: inference reads a bf16 weight as stored with the fp32 cast's result",
          "[kernels][gpu][gated_norm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const auto options = at::TensorOptions().device(at::kCUDA);
  const at::Tensor x = at::randn({3, 32, 128}, options), gate = at::randn({3, 32, 128}, options).to(at::kBFloat16);
  for (const int64_t width : {int64_t{128}, int64_t{32 * 128}}) {  // shared by every head, a slice per head
    const at::Tensor weight = at::randn({width}, options).to(at::kBFloat16);
    for (const auto order : {kernels::GateOrder::BeforeNorm, kernels::GateOrder::AfterNorm}) {
      const at::NoGradGuard no_grad;
      const at::Tensor stored = kernels::gated_norm(x, gate, weight, kEps, order, at::kBFloat16);
      const at::Tensor cast = kernels::gated_norm(x, gate, weight.to(at::kFloat), kEps, order, at::kBFloat16);
      CHECK(at::equal(stored, cast));  // bf16 -> fp32 is exact: the same arithmetic
      CHECK(at::isfinite(stored.to(at::kFloat)).all().item<bool>());
    }
  }
}
