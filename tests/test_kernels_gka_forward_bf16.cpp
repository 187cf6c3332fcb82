// kernels/gka_solve's bf16 forward (gka_forward_bf16.h): GKA's chunked core under
// PRIME_SSM_CORE=bf16 without a gradient to record, against the chunked core in float64 on the
// CPU: o and both final states within max(1e-2, 4 x the core's sensitivity to bf16 q, k, v). T not
// a multiple of the chunk, states entering, alpha or none, and chunks flagged as document starts.
// Outputs are poisoned with NaN first.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/gka_solve/gka_forward_bf16.h"
#include "model/gka_core.h"
#include "test_gka_util.h"
#include "test_helpers.h"
#include "test_kernels_util.h"
#include "util/error.h"

using namespace prime;
using test::norm_relative_error;

namespace {

struct CoreCase {
  int64_t B, T, H, D;
  bool alpha, states, starts;
  int num_iter = 30;  // Chebyshev iterations
};

struct CoreInputs {
  model::GkaMixer::Prepared in;
  at::Tensor kk_state, kv_state, starts;
};

// GKA's prepared inputs as the mixer makes them, float64 on the CPU: unit q and k, k and v scaled
// by beta + 1e-6, one log decay in (-0.3, 0) for both states, alpha in (0, 1).
CoreInputs random_inputs(const CoreCase& c, uint64_t seed) {
  at::manual_seed(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const std::vector<int64_t> rows{c.B, c.T, c.H, c.D}, gates{c.B, c.T, c.H};
  const auto unit = [&](const std::vector<int64_t>& sizes) {
    const at::Tensor x = at::randn(sizes, f64);
    return x / x.norm(2, -1, true);
  };
  const at::Tensor beta = (at::rand(gates, f64) * 0.9 + 0.1 + 1e-6).unsqueeze(-1);
  CoreInputs out;
  out.in.q = unit(rows);
  out.in.k = unit(rows) * beta;
  out.in.v = at::randn(rows, f64) * beta;
  out.in.log_decay_kv = -at::softplus(at::randn(gates, f64)) * 0.1 - 1e-3;
  out.in.log_decay_kk = out.in.log_decay_kv;
  if (c.alpha) out.in.alpha = at::sigmoid(at::randn(gates, f64));
  if (c.states) {
    const at::Tensor history = unit({c.B, c.H, 2 * c.D, c.D}) * 0.5;
    out.kk_state = at::matmul(history.transpose(-1, -2), history);
    out.kv_state = at::randn({c.B, c.H, c.D, c.D}, f64) * 0.1;
  }
  if (c.starts) {
    out.starts = at::zeros({c.T / 64}, at::TensorOptions().dtype(at::kBool));
    out.starts[1] = true;
  }
  return out;
}

// The inputs on `device` in `type` (gates and states fp32 or float64), q, k, v rounded to bf16
// first where asked.
CoreInputs cast(const CoreInputs& from, const at::Device& device, at::ScalarType type, bool bf16_qkv = false) {
  const auto to = [&](const at::Tensor& x, bool row) {
    if (!x.defined()) return x;
    const at::Tensor rounded = row && bf16_qkv ? x.to(at::kBFloat16) : x;
    return rounded.to(device, type);
  };
  CoreInputs out;
  out.in.q = to(from.in.q, true);
  out.in.k = to(from.in.k, true);
  out.in.v = to(from.in.v, true);
  out.in.log_decay_kv = to(from.in.log_decay_kv, false);
  out.in.log_decay_kk = out.in.log_decay_kv;
  out.in.alpha = to(from.in.alpha, false);
  out.kk_state = to(from.kk_state, false);
  out.kv_state = to(from.kv_state, false);
  out.starts = from.starts.defined() ? from.starts.to(device) : from.starts;
  return out;
}

model::gka_detail::ChunkedResult run_core(const CoreInputs& c, int64_t D, int num_iter = 30) {
  model::gka_detail::SolveOptions options;
  options.num_iter = num_iter;
  options.output_scale = 1.0 / std::sqrt(static_cast<double>(D));
  const at::Tensor zeros = at::zeros({c.in.q.size(0), c.in.q.size(2), D, D}, c.in.q.options());
  return model::gka_detail::chunked_core(c.in, c.kk_state.defined() ? c.kk_state : zeros,
                                         c.kv_state.defined() ? c.kv_state : zeros, 64, options, c.starts);
}

// One output: ours, float64's, and float64's on bf16-rounded q, k, v.
struct Compared {
  const char* name;
  at::Tensor ours, reference, rounded;
};

// Checks ours within max(1e-2, 4 x the sensitivity) of float64 and returns its error.
double within_bf16_bound(const Compared& c) {
  const double error = norm_relative_error(c.ours, c.reference);
  const double sensitivity = norm_relative_error(c.rounded, c.reference);
  INFO("error " << error << ", sensitivity to bf16 q, k, v " << sensitivity);
  CHECK(at::isfinite(c.ours).all().item<bool>());
  CHECK(error <= std::max(1e-2, 4 * sensitivity));
  return error;
}

bool applies(const CoreInputs& c) {
  return kernels::gka_forward_bf16_apply(c.in.q, c.in.k, c.in.v, c.in.log_decay_kk, c.in.log_decay_kv, c.in.alpha,
                                         c.kk_state, c.kv_state, 64, c.starts, 30);
}

// o and both final states of ours within the bf16 bound of the float64 core on `inputs` (each error
// printed after `label`).
void check_against_float64(const model::gka_detail::ChunkedResult& ours, const CoreInputs& inputs, int64_t D,
                           const std::string& label, int num_iter = 30) {
  const model::gka_detail::ChunkedResult reference = run_core(inputs, D, num_iter);
  const model::gka_detail::ChunkedResult rounded = run_core(cast(inputs, at::kCPU, at::kDouble, true), D, num_iter);
  const Compared outputs[] = {{"o", ours.o, reference.o, rounded.o},
                              {"H", ours.kk_state, reference.kk_state, rounded.kk_state},
                              {"S", ours.kv_state, reference.kv_state, rounded.kv_state}};
  for (const Compared& output : outputs) {
    INFO(output.name);
    const double error = within_bf16_bound(output);
    std::cout << "[kernels][gka] " << label << ": " << output.name << " vs float64 " << error << std::endl;
  }
}

}  // namespace

TEST_CASE("GKA bf16 forward: CPU tensors and other dtypes never take it", "[kernels][gka]") {
  const CoreInputs c = random_inputs({1, 64, 2, 32, true, true, false}, 3);
  CHECK_FALSE(applies(cast(c, at::kCPU, at::kFloat)));
  CHECK_FALSE(applies(c));  // float64
}

TEST_CASE("GKA bf16 forward: where it applies on CUDA", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  const CoreInputs base = random_inputs({1, 64, 2, 32, true, true, false}, 4);
  CoreInputs c = cast(base, cuda, at::kFloat);
  CHECK(applies(c));
  CHECK(applies(cast(base, cuda, at::kFloat, true)));
  c.in.q = c.in.q.detach().requires_grad_(true);
  CHECK_FALSE(applies(c));  // a gradient to record: the autograd form runs
  {
    const at::NoGradGuard no_grad;
    CHECK(applies(c));
  }
  CoreInputs two_decays = cast(base, cuda, at::kFloat);
  two_decays.in.log_decay_kk = two_decays.in.log_decay_kv.clone();
  CHECK_FALSE(applies(two_decays));
  CHECK_FALSE(applies(cast(random_inputs({1, 64, 2, 48, true, true, false}, 5), cuda, at::kFloat)));  // D = 48
  const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
  CHECK_FALSE(applies(cast(base, cuda, at::kFloat)));
}

// Each form of the solve with the iterate held in registers: the default (registers), and on the
// warpgroup MMAs (wgmma: D = 64 and 128; one-group: D = 128, D = 64 taking wgmma; D = 32 the shared
// form), whose products add in another order (their difference from the register form printed beside
// each form's error); an odd iteration count too (the warpgroup solve runs iterations in pairs).
TEST_CASE("GKA bf16 forward: o and the final states within bf16 accuracy of float64", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::ScopedEnv bf16("PRIME_SSM_CORE", "bf16");
  const at::NoGradGuard no_grad;
  const at::Device cuda(at::kCUDA, 0);
  for (const CoreCase& shape : std::vector<CoreCase>{{2, 200, 3, 64, true, true, false},
                                                     {1, 128, 2, 128, false, false, false},
                                                     {2, 192, 2, 32, true, true, true},
                                                     {1, 300, 2, 128, true, true, false},
                                                     {2, 192, 2, 128, false, false, true},
                                                     {1, 200, 2, 128, true, true, false, 7}}) {
    INFO("B=" << shape.B << " T=" << shape.T << " H=" << shape.H << " D=" << shape.D << " alpha=" << shape.alpha
              << " states=" << shape.states << " starts=" << shape.starts << " N=" << shape.num_iter);
    const CoreInputs inputs = random_inputs(shape, 40 + shape.T + shape.D);
    const CoreInputs on_cuda = cast(inputs, cuda, at::kFloat);
    REQUIRE(applies(on_cuda));
    at::Tensor register_o;
    for (const char* form : {"registers", "wgmma", "one-group"}) {
      INFO(form);
      const bool warpgroups = std::string(form) != "registers";
      if (warpgroups && !kernels::gka_forward_wgmma_available(cuda)) continue;  // not a Hopper
      const test::ScopedEnv iterate("PRIME_GKA_FORWARD_ITERATE", form);
      const model::gka_detail::ChunkedResult ours = run_core(on_cuda, shape.D, shape.num_iter);
      CHECK(ours.o.scalar_type() == at::kFloat);
      // The form that ran (no fallback passing for it): D = 32 keeps its iterate in shared memory, D = 64 takes
      // the warpgroup form for the one-group one.
      using kernels::GkaForwardIterate;
      const GkaForwardIterate asked = !warpgroups                               ? GkaForwardIterate::Registers
                                      : std::string(form) == "wgmma" || shape.D != 128 ? GkaForwardIterate::Wgmma
                                                                                       : GkaForwardIterate::OneGroup;
      CHECK(kernels::gka_forward_last_form() == (shape.D == 32 ? GkaForwardIterate::Shared : asked));
      check_against_float64(ours, inputs, shape.D,
                            std::string("bf16 forward, ") + form + ", B=" + std::to_string(shape.B) +
                                " T=" + std::to_string(shape.T) + " H=" + std::to_string(shape.H) +
                                " D=" + std::to_string(shape.D) + " N=" + std::to_string(shape.num_iter),
                            shape.num_iter);
      if (!register_o.defined()) {
        register_o = ours.o;
      } else {
        std::cout << "[kernels][gka] bf16 forward D=" << shape.D << " T=" << shape.T << ": " << form
                  << " vs registers, o " << norm_relative_error(ours.o, register_o) << std::endl;
      }
    }
  }
}

// bf16 q, k, v (the kernel's bf16 output path; no PRIME_SSM_CORE needed) and a core without decays.
TEST_CASE("GKA bf16 forward: bf16 operands give a bf16 o, and a core without decays", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::NoGradGuard no_grad;
  const at::Device cuda(at::kCUDA, 0);
  for (const int D : {64, 128}) {  // at D = 128 on Hopper the one-group form's bf16 output
    for (const bool decays : {true, false}) {
      INFO("D " << D << " decays " << decays);
      const CoreCase shape{2, 160, 2, D, true, true, false};
      CoreInputs inputs = random_inputs(shape, 61 + decays + D);
      if (!decays) inputs.in.log_decay_kv = inputs.in.log_decay_kk = at::Tensor();
      CoreInputs on_cuda = cast(inputs, cuda, at::kFloat);
      for (at::Tensor* row : {&on_cuda.in.q, &on_cuda.in.k, &on_cuda.in.v}) *row = row->to(at::kBFloat16);
      REQUIRE(applies(on_cuda));
      const model::gka_detail::ChunkedResult ours = run_core(on_cuda, shape.D);
      CHECK(ours.o.scalar_type() == at::kBFloat16);
      check_against_float64(ours, inputs, shape.D,
                            std::string("bf16 forward, bf16 operands, D=") + std::to_string(D) +
                                (decays ? "" : ", no decay"));
    }
  }
}

// The whole layer (prepare, the chunked core, the gated output norm) under PRIME_SSM_CORE=bf16 on
// CUDA: prefill on the bf16 forward, then a decode step from the states it left in the cache,
// against the float64 layer on the CPU (T not a multiple of 64, grouped heads).
TEST_CASE("GKA bf16 forward in the layer: a prefill and the decode step after it", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  using namespace test_gka;
  const Shape shape{256, 64, 8, 2};
  const model::GkaConfig config = make_config(shape);
  const model::TensorMap w64 = random_weights(config, 151);
  const at::Device cuda(at::kCUDA, 0);
  model::GkaMixer gpu(config, cast_weights(w64, at::kFloat, cuda), kPrefix);
  model::GkaMixer cpu(config, w64, kPrefix);
  const at::Tensor x = random_input(2, 300, shape.hidden, 152);
  const at::NoGradGuard no_grad;
  const at::Tensor reference = cpu.forward(x, nullptr);
  const at::Tensor x32 = x.to(cuda, at::kFloat);
  const at::Tensor default_form = gpu.forward(x32, nullptr);  // the float64 solve
  const test::ScopedEnv bf16("PRIME_SSM_CORE", "bf16");
  const at::Tensor ours = gpu.forward(x32, nullptr);
  auto cache = gpu.make_cache(2, cuda);
  gpu.forward(x32.narrow(1, 0, 299), cache.get());
  const at::Tensor step = gpu.step(x32.narrow(1, 299, 1), *cache);
  const double error = rel_error(ours, reference), step_error = rel_error(step, reference.narrow(1, 299, 1));
  std::cout << "[kernels][gka] bf16 forward in the layer, D=64 T=300 G=4: vs float64 " << error
            << ", decode step after the prefill " << step_error << ", the default form vs float64 "
            << rel_error(default_form, reference) << std::endl;
  CHECK(error <= 2e-2);
  CHECK(step_error <= 2e-2);
  CHECK(rel_error(ours, default_form) > 1e-5);  // the bf16 form ran, not the float64 solve
}

TEST_CASE("GKA bf16 forward: PRIME_GKA_FORWARD_ITERATE picks where the solve keeps its iterate", "[kernels][gka]") {
  using kernels::GkaForwardIterate;
  {
    const test::ScopedEnv unset("PRIME_GKA_FORWARD_ITERATE", nullptr);
    CHECK(kernels::gka_forward_iterate(at::kCPU) == GkaForwardIterate::Registers);
#ifdef PRIME_WITH_CUDA
    if (at::hasCUDA()) {  // a Hopper takes one warpgroup a chunk: the default build carries sm_90a code
      const at::Device cuda(at::kCUDA, 0);
      const bool hopper = at::cuda::getDeviceProperties(0)->major == 9;
      CHECK(kernels::gka_forward_wgmma_available(cuda) == hopper);
      CHECK(kernels::gka_forward_iterate(cuda) ==
            (hopper ? GkaForwardIterate::OneGroup : GkaForwardIterate::Registers));
    }
#endif
  }
  for (const auto& [text, form] : {std::pair{"registers", GkaForwardIterate::Registers},
                                   std::pair{"shared", GkaForwardIterate::Shared},
                                   std::pair{"wgmma", GkaForwardIterate::Wgmma},
                                   std::pair{"one-group", GkaForwardIterate::OneGroup}}) {
    const test::ScopedEnv set("PRIME_GKA_FORWARD_ITERATE", text);
    CHECK(kernels::gka_forward_iterate(at::kCPU) == form);
  }
  const test::ScopedEnv bad("PRIME_GKA_FORWARD_ITERATE", "smem");
  CHECK_THROWS_AS(kernels::gka_forward_iterate(at::kCPU), UserError);
  // The solve split over a two-block cluster is retired: "cluster" is an unknown value like any other,
  // the error naming the valid ones.
  const test::ScopedEnv retired("PRIME_GKA_FORWARD_ITERATE", "cluster");
  CHECK_THROWS_AS(kernels::gka_forward_iterate(at::kCPU), UserError);
  CHECK_THROWS_WITH(kernels::gka_forward_iterate(at::kCPU),
                    Catch::Matchers::Contains("PRIME_GKA_FORWARD_ITERATE=cluster") &&
                        Catch::Matchers::Contains("\"registers\"") && Catch::Matchers::Contains("\"shared\"") &&
                        Catch::Matchers::Contains("\"wgmma\"") && Catch::Matchers::Contains("\"one-group\""));
}

// The iterate in registers (8 warps at D = 128, 4 at D = 64) against the 16-warp form with the
// iterate in shared memory: the same products in the same order per element, so the same result
// up to the compilers' fusing of the update's multiply-adds (D = 32 takes the shared form either way).
TEST_CASE("GKA bf16 forward: the iterate in registers gives the shared-memory form's result", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::ScopedEnv bf16("PRIME_SSM_CORE", "bf16");
  const at::NoGradGuard no_grad;
  const at::Device cuda(at::kCUDA, 0);
  for (const CoreCase& shape : std::vector<CoreCase>{{2, 200, 3, 64, true, true, false},
                                                     {1, 300, 2, 128, true, true, false},
                                                     {2, 192, 2, 128, false, false, true},
                                                     {1, 100, 2, 32, true, true, false}}) {
    INFO("B=" << shape.B << " T=" << shape.T << " H=" << shape.H << " D=" << shape.D);
    const CoreInputs on_cuda = cast(random_inputs(shape, 80 + shape.T + shape.D), cuda, at::kFloat);
    REQUIRE(applies(on_cuda));
    model::gka_detail::ChunkedResult forms[2];
    for (const bool registers : {false, true}) {
      const test::ScopedEnv iterate("PRIME_GKA_FORWARD_ITERATE", registers ? "registers" : "shared");
      forms[registers] = run_core(on_cuda, shape.D);
      CHECK(kernels::gka_forward_last_form() == (registers && shape.D >= 64 ? kernels::GkaForwardIterate::Registers
                                                                              : kernels::GkaForwardIterate::Shared));
    }
    CHECK(at::isfinite(forms[1].o).all().item<bool>());
    const double o_difference = norm_relative_error(forms[1].o, forms[0].o);
    std::cout << "[kernels][gka] bf16 forward D=" << shape.D << " T=" << shape.T
              << ": iterate in registers vs in shared memory, o " << o_difference << " (max abs "
              << (forms[1].o - forms[0].o).abs().max().item<double>() << ")" << std::endl;
    CHECK(o_difference <= 1e-5);
    CHECK(at::equal(forms[1].kk_state, forms[0].kk_state));  // the walks: the same launches
    CHECK(at::equal(forms[1].kv_state, forms[0].kv_state));
  }
}

// Small enough for compute-sanitizer's memcheck and racecheck (experiments/kernels/run_gpu.sh): the
// shared-memory form (D = 32), the register form with 4 and 8 warps (D = 64, 128), the solve on
// the warpgroup MMAs (D = 64, 128) and on one warpgroup a chunk (D = 128).
TEST_CASE("GKA bf16 forward: one small sequence for the sanitizer", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::ScopedEnv bf16("PRIME_SSM_CORE", "bf16");
  const at::NoGradGuard no_grad;
  for (const auto& [D, iterate] : {std::pair{32, "registers"}, std::pair{64, "registers"},
                                   std::pair{128, "registers"}, std::pair{64, "wgmma"}, std::pair{128, "wgmma"},
                                   std::pair{128, "one-group"}}) {
    INFO("D=" << D << " " << iterate);
    if (std::string(iterate) != "registers" && !kernels::gka_forward_wgmma_available(at::Device(at::kCUDA, 0)))
      continue;
    const test::ScopedEnv form("PRIME_GKA_FORWARD_ITERATE", iterate);
    const CoreCase shape{1, 70, 1, D, true, true, false};
    const CoreInputs inputs = random_inputs(shape, 7);
    const CoreInputs on_cuda = cast(inputs, at::Device(at::kCUDA, 0), at::kFloat);
    REQUIRE(applies(on_cuda));
    const model::gka_detail::ChunkedResult ours = run_core(on_cuda, shape.D);
    within_bf16_bound({"o", ours.o, run_core(inputs, shape.D).o,
                       run_core(cast(inputs, at::kCPU, at::kDouble, true), shape.D).o});
  }
}
