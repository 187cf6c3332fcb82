// kernels/ssm_decode: the fused GDN and Mamba-2 decode steps, reached through the model's
// in-place steps, against a float64 reference of one step (the recurrence written out on the
// CPU) and against the torch in-place steps on CUDA, over several steps in a row; the cache's
// state tensor kept; outputs poisoned with NaN first; shapes the kernels do not serve fall back
// to the torch step; a CUDA graph of the step replays as the eager step.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/ssm_decode/ssm_decode.h"
#include "eval/decode_bench.h"
#include "model/gdn.h"
#include "model/mamba2.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

using namespace prime;

namespace {

constexpr double kTolerance = 1e-5;  // fp32 against float64 and against the torch step

at::Tensor unit_rows(at::IntArrayRef sizes) {
  const at::Tensor x = at::randn(sizes, at::kDouble);
  return x / x.norm(2, -1, true);
}

// One token's GDN operands in float64 on the CPU (k unit rows as the mixer's L2 norm gives).
struct GdnInputs {
  at::Tensor q, k, v, g, beta;
};

GdnInputs gdn_inputs(int64_t B, int64_t H, int64_t Dk, int64_t Dv) {
  return {unit_rows({B, H, Dk}) * 0.25, unit_rows({B, H, Dk}), at::randn({B, H, Dv}, at::kDouble),
          -at::rand({B, H}, at::kDouble) * 0.5, at::rand({B, H}, at::kDouble)};
}

// S = e^g S; u = beta (v - S^T k); S += k u^T; o = S^T q, each written out in float64.
at::Tensor gdn_reference_step(const GdnInputs& in, at::Tensor& state) {
  state = state * at::exp(in.g).unsqueeze(-1).unsqueeze(-1);
  const at::Tensor predicted = (state * in.k.unsqueeze(-1)).sum(2);  // sum_i S_ij k_i
  const at::Tensor u = in.beta.unsqueeze(-1) * (in.v - predicted);
  state = state + in.k.unsqueeze(-1) * u.unsqueeze(-2);
  return (state * in.q.unsqueeze(-1)).sum(2);
}

struct Mamba2Inputs {
  at::Tensor x, delta, A, Bm, Cm;
};

Mamba2Inputs mamba2_inputs(int64_t B, int64_t H, int64_t P, int64_t N) {
  return {at::randn({B, H, P}, at::kDouble), at::rand({B, H}, at::kDouble),
          -at::rand({H}, at::kDouble) - 0.1, at::randn({B, H, N}, at::kDouble) / std::sqrt(N),
          at::randn({B, H, N}, at::kDouble) / std::sqrt(N)};
}

// h = e^(delta A) h + delta x B^T; y = h C, in float64.
at::Tensor mamba2_reference_step(const Mamba2Inputs& in, at::Tensor& state) {
  const at::Tensor decay = at::exp(in.delta * in.A).unsqueeze(-1).unsqueeze(-1);
  state = decay * state + (in.delta.unsqueeze(-1) * in.x).unsqueeze(-1) * in.Bm.unsqueeze(-2);
  return (state * in.Cm.unsqueeze(-2)).sum(-1);
}

at::Tensor on_cuda(const at::Tensor& t) { return t.to(at::kCUDA, at::kFloat); }

GdnInputs on_cuda(const GdnInputs& in) {
  return {on_cuda(in.q), on_cuda(in.k), on_cuda(in.v), on_cuda(in.g), on_cuda(in.beta)};
}

Mamba2Inputs on_cuda(const Mamba2Inputs& in) {
  return {on_cuda(in.x), on_cuda(in.delta), on_cuda(in.A), on_cuda(in.Bm), on_cuda(in.Cm)};
}

// Worst relative errors of a decode run: the outputs of every step, the final state.
struct Errors {
  double output_vs_reference = 0, state_vs_reference = 0, output_vs_torch = 0, state_vs_torch = 0;
};

// Runs `steps` decode steps three ways from one state: the model's in-place step under policy
// Auto (the kernel; `served` says whether it must apply), the same under policy Torch, and the
// float64 reference. make_inputs() draws one token's float64 operands; step(in, state) runs the
// model's in-place step on CUDA operands; reference(in, state) the float64 step; applies(in,
// state) asks the kernel's predicate.
template <typename MakeInputs, typename Step, typename Reference, typename Applies>
Errors compare_steps(at::Tensor state0, int steps, bool served, const MakeInputs& make_inputs,
                     const Step& step, const Reference& reference, const Applies& applies) {
  at::NoGradGuard no_grad;
  at::Tensor reference_state = state0;
  at::Tensor kernel_state = on_cuda(state0), torch_state = on_cuda(state0);
  const void* kernel_address = kernel_state.data_ptr();
  Errors errors;
  for (int t = 0; t < steps; ++t) {
    const auto in = make_inputs();
    const auto dev = on_cuda(in);
    REQUIRE(applies(dev, kernel_state) == served);
    const at::Tensor want = reference(in, reference_state);
    const at::Tensor got = step(dev, kernel_state);
    at::Tensor torch_out;
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      REQUIRE_FALSE(applies(dev, torch_state));
      torch_out = step(dev, torch_state);
    }
    REQUIRE(got.sizes() == want.sizes());
    errors.output_vs_reference = std::max(errors.output_vs_reference, test::relative_error(got, want));
    errors.output_vs_torch = std::max(errors.output_vs_torch, test::relative_error(got, torch_out));
  }
  CHECK(kernel_state.data_ptr() == kernel_address);
  errors.state_vs_reference = test::relative_error(kernel_state, reference_state);
  errors.state_vs_torch = test::relative_error(kernel_state, torch_state);
  return errors;
}

void check_errors(const Errors& e, const char* what) {
  std::cout << "[kernels][decode] " << what << " output vs float64 " << e.output_vs_reference
            << ", state vs float64 " << e.state_vs_reference << ", output vs torch step "
            << e.output_vs_torch << ", state vs torch step " << e.state_vs_torch << "\n";
  CHECK(e.output_vs_reference <= kTolerance);
  CHECK(e.state_vs_reference <= kTolerance);
  CHECK(e.output_vs_torch <= kTolerance);
  CHECK(e.state_vs_torch <= kTolerance);
}

Errors run_gdn(int64_t B, int64_t H, int64_t Dk, int64_t Dv, int steps, bool served) {
  return compare_steps(
      at::randn({B, H, Dk, Dv}, at::kDouble) * 0.5, steps, served,
      [&] { return gdn_inputs(B, H, Dk, Dv); },
      [](const GdnInputs& in, at::Tensor& state) {
        return model::gated_delta_rule_step_in_place(in.q, in.k, in.v, in.g, in.beta, state);
      },
      gdn_reference_step,
      [](const GdnInputs& in, const at::Tensor& state) {
        return kernels::gdn_decode_apply(in.q, in.k, in.v, in.g, in.beta, state);
      });
}

Errors run_mamba2(int64_t B, int64_t H, int64_t P, int64_t N, int steps, bool served) {
  return compare_steps(
      at::randn({B, H, P, N}, at::kDouble) * 0.5, steps, served,
      [&] { return mamba2_inputs(B, H, P, N); },
      [](const Mamba2Inputs& in, at::Tensor& state) {
        return model::ssd_step_in_place(in.x, in.delta, in.A, in.Bm, in.Cm, state);
      },
      mamba2_reference_step,
      [](const Mamba2Inputs& in, const at::Tensor& state) {
        return kernels::mamba2_decode_apply(in.x, in.delta, in.A, in.Bm, in.Cm, state);
      });
}

}  // namespace

TEST_CASE("SSM decode kernels: never apply to CPU tensors", "[kernels][decode]") {
  at::NoGradGuard no_grad;
  const GdnInputs g = gdn_inputs(2, 3, 16, 16);
  const at::Tensor gdn_state = at::zeros({2, 3, 16, 16});
  CHECK_FALSE(kernels::gdn_decode_apply(g.q.to(at::kFloat), g.k.to(at::kFloat), g.v.to(at::kFloat),
                                        g.g.to(at::kFloat), g.beta.to(at::kFloat), gdn_state));
  const Mamba2Inputs m = mamba2_inputs(2, 3, 16, 8);
  const at::Tensor m2_state = at::zeros({2, 3, 16, 8});
  CHECK_FALSE(kernels::mamba2_decode_apply(m.x.to(at::kFloat), m.delta.to(at::kFloat), m.A.to(at::kFloat),
                                           m.Bm.to(at::kFloat), m.Cm.to(at::kFloat), m2_state));
}

// The GPU tests below trust these references: here they meet the model's torch steps in float64.
TEST_CASE("SSM decode references: the float64 steps equal the model's in-place torch steps", "[kernels][decode]") {
  at::NoGradGuard no_grad;
  at::manual_seed(5);
  const GdnInputs g = gdn_inputs(3, 2, 24, 40);
  at::Tensor reference = at::randn({3, 2, 24, 40}, at::kDouble), in_place = reference.clone();
  const at::Tensor o_want = gdn_reference_step(g, reference);
  const at::Tensor o = model::gated_delta_rule_step_in_place(g.q, g.k, g.v, g.g, g.beta, in_place);
  CHECK(test::relative_error(o, o_want) <= 1e-12);
  CHECK(test::relative_error(in_place, reference) <= 1e-12);
  const Mamba2Inputs m = mamba2_inputs(3, 2, 24, 40);
  reference = at::randn({3, 2, 24, 40}, at::kDouble), in_place = reference.clone();
  const at::Tensor y_want = mamba2_reference_step(m, reference);
  const at::Tensor y = model::ssd_step_in_place(m.x, m.delta, m.A, m.Bm, m.Cm, in_place);
  CHECK(test::relative_error(y, y_want) <= 1e-12);
  CHECK(test::relative_error(in_place, reference) <= 1e-12);
}

TEST_CASE("GDN decode kernel: steps equal float64 and the torch step, the state updated in place",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::manual_seed(7);
  // (B, H, Dk, Dv): B*H of no particular multiple, Dk != Dv; float4 rows where Dv % 4 == 0,
  // scalar ones otherwise (Dv = 100 is float4, 37 scalar); the last two fill the GPU.
  const std::vector<std::array<int64_t, 4>> shapes = {
      {3, 5, 32, 32}, {2, 7, 64, 100}, {5, 3, 128, 128}, {1, 3, 256, 64}, {2, 3, 100, 256},
      {3, 2, 256, 256}, {1, 1, 37, 37}, {17, 2, 128, 64}, {71, 2, 128, 128}, {45, 3, 64, 256}};
  for (const auto& [B, H, Dk, Dv] : shapes) {
    const std::string what = "GDN (B,H,Dk,Dv)=(" + std::to_string(B) + "," + std::to_string(H) + "," +
                             std::to_string(Dk) + "," + std::to_string(Dv) + ") 3 steps";
    INFO(what);
    check_errors(run_gdn(B, H, Dk, Dv, 3, true), what.c_str());
  }
  INFO("Dk = 300: not served, the torch step runs");
  check_errors(run_gdn(2, 2, 300, 64, 2, false), "GDN Dk=300 (torch step)");
}

TEST_CASE("Mamba-2 decode kernel: steps equal float64 and the torch step, the state updated in place",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::manual_seed(11);
  // (B, H, P, N): P not a multiple of the 32-row block, N of width 4 and 1.
  const std::vector<std::array<int64_t, 4>> shapes = {
      {3, 5, 32, 32}, {2, 7, 64, 128}, {5, 3, 128, 128}, {1, 3, 256, 64}, {2, 3, 100, 256},
      {3, 2, 256, 256}, {1, 1, 37, 37}, {17, 2, 64, 100}, {71, 2, 128, 128}};
  for (const auto& [B, H, P, N] : shapes) {
    const std::string what = "Mamba-2 (B,H,P,N)=(" + std::to_string(B) + "," + std::to_string(H) + "," +
                             std::to_string(P) + "," + std::to_string(N) + ") 3 steps";
    INFO(what);
    check_errors(run_mamba2(B, H, P, N, 3, true), what.c_str());
  }
  INFO("N = 300: not served, the torch step runs");
  check_errors(run_mamba2(2, 2, 64, 300, 2, false), "Mamba-2 N=300 (torch step)");
}

TEST_CASE("Mamba-2 decode kernel: the skip term D x in the same launch with D fp32 or bf16", "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::NoGradGuard no_grad;  // the kernel serves inference
  at::manual_seed(13);
  for (const auto& [B, H, P, N] : std::vector<std::array<int64_t, 4>>{{1, 32, 128, 128}, {3, 5, 100, 64}}) {
    for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
      const Mamba2Inputs in = mamba2_inputs(B, H, P, N);
      const at::Tensor D = at::randn({H}, at::kDouble).to(type).to(at::kDouble);  // exact in either dtype
      at::Tensor reference_state = at::randn({B, H, P, N}, at::kDouble) * 0.5;
      at::Tensor state = on_cuda(reference_state), plain_state = state.clone();
      const at::Tensor want = mamba2_reference_step(in, reference_state) + D.view({1, H, 1}) * in.x;
      const Mamba2Inputs c = on_cuda(in);
      REQUIRE(kernels::mamba2_decode_apply(c.x, c.delta, c.A, c.Bm, c.Cm, state));
      const at::Tensor got = kernels::mamba2_decode_step(c.x, c.delta, c.A, c.Bm, c.Cm, state, D.to(at::kCUDA, type));
      const at::Tensor plain = kernels::mamba2_decode_step(c.x, c.delta, c.A, c.Bm, c.Cm, plain_state);
      const double output = test::relative_error(got, want), state_error = test::relative_error(state, reference_state);
      std::cout << "[kernels][decode] Mamba-2 with the skip term, D " << c10::toString(type) << " (B,H,P,N)=(" << B
                << "," << H << "," << P << "," << N << "): output vs float64 " << output << ", state " << state_error
                << std::endl;
      CHECK(output <= kTolerance);
      CHECK(state_error <= kTolerance);
      CHECK(at::equal(state, plain_state));  // the skip term leaves the state alone
      CHECK(test::relative_error(got, plain) > 1e-2);  // and it was added
    }
  }
  const Mamba2Inputs c = on_cuda(mamba2_inputs(1, 3, 32, 32));
  at::Tensor state = at::zeros({1, 3, 32, 32}, c.x.options());
  CHECK_THROWS_WITH(kernels::mamba2_decode_step(c.x, c.delta, c.A, c.Bm, c.Cm, state, at::ones({4}, c.x.options())),
                    Catch::Contains("skip must be a contiguous [3]"));
}

TEST_CASE("SSM decode kernels: not taken under grad mode or policy Torch", "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const GdnInputs g = on_cuda(gdn_inputs(2, 3, 64, 64));
  const Mamba2Inputs m = on_cuda(mamba2_inputs(2, 3, 64, 64));
  const at::Tensor state = at::zeros({2, 3, 64, 64}, at::TensorOptions().device(at::kCUDA));
  const auto gdn_applies = [&] { return kernels::gdn_decode_apply(g.q, g.k, g.v, g.g, g.beta, state); };
  const auto m2_applies = [&] { return kernels::mamba2_decode_apply(m.x, m.delta, m.A, m.Bm, m.Cm, state); };
  {
    at::NoGradGuard no_grad;
    CHECK(gdn_applies());
    CHECK(m2_applies());
    CHECK_FALSE(kernels::gdn_decode_apply(g.q, g.k, g.v, g.g, g.beta, state.transpose(2, 3)));
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    CHECK_FALSE(gdn_applies());
    CHECK_FALSE(m2_applies());
  }
  const at::AutoGradMode grad_mode(true);
  CHECK_FALSE(gdn_applies());
  CHECK_FALSE(m2_applies());
}

#ifdef PRIME_WITH_CUDA
TEST_CASE("SSM decode kernels: a CUDA graph of the steps replays as the eager steps", "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  at::manual_seed(13);
  const int64_t B = 24, H = 6, D = 128;
  const GdnInputs g = on_cuda(gdn_inputs(B, H, D, D));
  const Mamba2Inputs m = on_cuda(mamba2_inputs(B, H, D, D));
  const at::Tensor gdn0 = at::randn({B, H, D, D}, at::TensorOptions().device(at::kCUDA)) * 0.5;
  const at::Tensor m20 = at::randn({B, H, D, D}, at::TensorOptions().device(at::kCUDA)) * 0.5;
  REQUIRE(kernels::gdn_decode_apply(g.q, g.k, g.v, g.g, g.beta, gdn0));
  REQUIRE(kernels::mamba2_decode_apply(m.x, m.delta, m.A, m.Bm, m.Cm, m20));
  at::Tensor gdn_eager = gdn0.clone(), m2_eager = m20.clone();
  at::Tensor gdn_graph = gdn0.clone(), m2_graph = m20.clone();
  at::Tensor o_eager, y_eager, o_graph, y_graph;
  for (int t = 0; t < 2; ++t) {
    o_eager = model::gated_delta_rule_step_in_place(g.q, g.k, g.v, g.g, g.beta, gdn_eager);
    y_eager = model::ssd_step_in_place(m.x, m.delta, m.A, m.Bm, m.Cm, m2_eager);
  }
  at::cuda::CUDAGraph graph;
  test::capture(graph, [&] {
    o_graph = model::gated_delta_rule_step_in_place(g.q, g.k, g.v, g.g, g.beta, gdn_graph);
    y_graph = model::ssd_step_in_place(m.x, m.delta, m.A, m.Bm, m.Cm, m2_graph);
  });
  CHECK(at::equal(gdn_graph, gdn0));  // capture ran nothing
  graph.replay();
  graph.replay();
  // The same kernels on the same operands: bit for bit.
  CHECK(at::equal(o_graph, o_eager));
  CHECK(at::equal(y_graph, y_eager));
  CHECK(at::equal(gdn_graph, gdn_eager));
  CHECK(at::equal(m2_graph, m2_eager));
}
#endif

TEST_CASE("SSM decode kernels: GDN and Mamba-2 hybrids decode on CUDA as with the torch steps",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const std::string teacher =
      "synthetic:qwen3-0.6b@layers=2,hidden=64,heads=4,kv_heads=2,head_dim=32,intermediate=128,vocab=64,seed=7";
  model::LoadOptions load;
  load.device = at::Device(at::kCUDA);
  for (const char* type : {"GDN", "M2"}) {
    INFO(type);
    eval::BenchModel bench = eval::load_bench_model(teacher + "+convert:" + type + ":1:1", load);
    model::HybridModel& model = *bench.model;
    const at::Tensor ids = at::randint(64, {3, 12}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
    at::NoGradGuard no_grad;
    // Prefill 8 tokens, then 4 decode steps; the kernels' run and the torch steps' run.
    const auto decode = [&](kernels::Policy policy, std::vector<const void*>* addresses) {
      const kernels::ScopedKernelPolicy scoped(policy);
      model::ModelCache cache = model.make_cache(3, 12);
      std::vector<at::Tensor> logits{model.forward(ids.narrow(1, 0, 8), &cache)};
      for (int64_t t = 8; t < 12; ++t) {
        logits.push_back(model.forward(ids.narrow(1, t, 1), &cache));
        for (auto& layer : cache.layers) {
          at::Tensor state;
          if (auto* gdn = dynamic_cast<model::GdnCache*>(layer.get())) state = gdn->state;
          if (auto* m2 = dynamic_cast<model::Mamba2Cache*>(layer.get())) state = m2->state;
          if (!state.defined() || !addresses) continue;
          // The cache's state is one the kernels serve, and it stays the same tensor.
          CHECK(state.is_cuda());
          CHECK(state.scalar_type() == at::kFloat);
          CHECK(state.is_contiguous());
          CHECK(state.size(2) <= kernels::kDecodeMaxDim);
          CHECK(state.size(3) <= kernels::kDecodeMaxDim);
          addresses->push_back(state.data_ptr());
        }
      }
      return at::cat(logits, 1);
    };
    std::vector<const void*> addresses;
    const at::Tensor with_kernels = decode(kernels::Policy::Auto, &addresses);
    const at::Tensor with_torch = decode(kernels::Policy::Torch, nullptr);
    REQUIRE(addresses.size() == 4);
    CHECK(std::all_of(addresses.begin(), addresses.end(), [&](const void* a) { return a == addresses[0]; }));
    const double error = test::relative_error(with_kernels, with_torch);
    std::cout << "[kernels][decode] " << type << " hybrid, 8-token prefill + 4 decode steps, logits vs torch steps "
              << error << "\n";
    CHECK(error <= 1e-4);
  }
}
