// kernels/gdn_chunk: the triangular inverse and the chunk-state scan against float64 references,
// and GDN's chunked core with the kernels against its torch-ops form (outputs and every
// gradient), on CUDA. Outputs are poisoned with NaN first, so an unwritten element fails.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/gdn_chunk/gdn_chunk.h"
#include "kernels/gka_solve/gka_forward_bf16.h"
#include "model/gdn.h"
#include "test_helpers.h"
#include "test_kernels_util.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/gdn_chunk/gdn_chunk_launch.h"
#endif

using namespace prime;

namespace {

using test::norm_relative_error;

// The scan's recurrence, float64, one chunk at a time (see kernels/gdn_chunk/gdn_chunk.h); the
// state entering a chunk flagged in `starts` is zero.
std::pair<at::Tensor, at::Tensor> reference_scan(const at::Tensor& w, const at::Tensor& kd,
                                                 const at::Tensor& u, const at::Tensor& decay,
                                                 const at::Tensor& initial,
                                                 const std::vector<bool>& starts = {}) {
  at::Tensor S = initial;
  std::vector<at::Tensor> states;
  for (int64_t n = 0; n < w.size(2); ++n) {
    if (!starts.empty() && starts[n]) S = at::zeros_like(S);
    states.push_back(S);
    const at::Tensor U = u.select(2, n) - at::matmul(w.select(2, n), S);
    S = decay.select(2, n).unsqueeze(-1).unsqueeze(-1) * S +
        at::matmul(kd.select(2, n).transpose(-1, -2), U);
  }
  return {at::stack(states, 2), S};
}

struct CoreInputs {
  at::Tensor q, k, v, g, beta, state;
};

// Operands as the GDN mixer feeds its core: normalised q/k, beta in (0,1), log decays < 0.
CoreInputs random_core_inputs(int64_t B, int64_t T, int64_t H, int64_t D, uint64_t seed) {
  at::manual_seed(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  CoreInputs in;
  in.q = at::randn({B, T, H, D}, f64);
  in.q = in.q / in.q.norm(2, -1, true) / std::sqrt(static_cast<double>(D));
  in.k = at::randn({B, T, H, D}, f64);
  in.k = in.k / in.k.norm(2, -1, true);
  in.v = at::randn({B, T, H, D}, f64);
  in.g = -at::rand({B, T, H}, f64) * 0.3 - 0.01;
  in.beta = at::rand({B, T, H}, f64) * 0.9 + 0.05;
  in.state = at::randn({B, H, D, D}, f64) * 0.1;
  return in;
}

std::vector<at::Tensor> as_leaves(const CoreInputs& in, const at::Device& device, at::ScalarType type) {
  std::vector<at::Tensor> leaves;
  for (const at::Tensor* t : {&in.q, &in.k, &in.v, &in.g, &in.beta, &in.state})
    leaves.push_back(t->to(device, type).detach().requires_grad_(true));
  return leaves;
}

// Output, final state and the gradients of a fixed random functional of both.
struct CoreRun {
  at::Tensor out, final_state;
  std::vector<at::Tensor> grads;
};
CoreRun run_core(const std::vector<at::Tensor>& leaves, int64_t chunk, const at::Tensor& out_weight,
                 const at::Tensor& state_weight) {
  auto [out, final_state] = model::gated_delta_rule_chunked(leaves[0], leaves[1], leaves[2], leaves[3],
                                                            leaves[4], leaves[5], chunk);
  const at::Tensor loss = (out * out_weight.to(out.options())).sum() +
                          (final_state * state_weight.to(out.options())).sum();
  CoreRun run{out.detach(), final_state.detach(), {}};
  for (const at::Tensor& grad : torch::autograd::grad({loss}, leaves)) run.grads.push_back(grad.detach());
  return run;
}

// The largest norm-relative error of `ours`'s gradients against `want`'s, over every input.
double worst_gradient_error(const CoreRun& ours, const CoreRun& want) {
  double worst = 0;
  for (size_t i = 0; i < want.grads.size(); ++i)
    worst = std::max(worst, norm_relative_error(ours.grads[i], want.grads[i]));
  return worst;
}

// The chunk-state scan on CUDA (fp32) against reference_scan in float64, states, final state
// and every input's gradient, for random operands of one shape; the state entering a chunk
// flagged in `starts` is zero. Returns the kernel's gradient of the initial state.
at::Tensor check_scan(int64_t Dk, int64_t Dv, int64_t N, const std::vector<bool>& starts, const at::Device& cuda) {
  const int64_t B = 2, H = 3, C = 64;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const std::vector<at::Tensor> inputs = {at::randn({B, H, N, C, Dk}, f64) * 0.1, at::randn({B, H, N, C, Dk}, f64) * 0.1,
                                          at::randn({B, H, N, C, Dv}, f64), at::rand({B, H, N}, f64) * 0.5 + 0.5,
                                          at::randn({B, H, Dk, Dv}, f64)};
  std::vector<at::Tensor> leaves64, leaves32;
  for (const at::Tensor& t : inputs) {
    leaves64.push_back(t.clone().requires_grad_(true));
    leaves32.push_back(t.to(cuda, at::kFloat).requires_grad_(true));
  }
  at::Tensor starts_cuda;
  if (!starts.empty()) {
    const std::vector<int64_t> flags(starts.begin(), starts.end());
    starts_cuda = at::tensor(flags, at::kLong).to(at::kBool).to(cuda);
  }
  auto [states64, final64] = reference_scan(leaves64[0], leaves64[1], leaves64[2], leaves64[3], leaves64[4], starts);
  auto [states32, final32] =
      kernels::chunk_state_scan(leaves32[0], leaves32[1], leaves32[2], leaves32[3], leaves32[4], starts_cuda);
  const at::Tensor ws = at::randn(states64.sizes(), f64), wf = at::randn(final64.sizes(), f64);
  const auto grads64 = torch::autograd::grad({(states64 * ws).sum() + (final64 * wf).sum()}, leaves64, {}, false,
                                             false, /*allow_unused=*/true);
  const auto grads32 = torch::autograd::grad(
      {(states32 * ws.to(cuda, at::kFloat)).sum() + (final32 * wf.to(cuda, at::kFloat)).sum()}, leaves32);
  double worst_grad = 0;
  for (size_t i = 0; i < grads64.size(); ++i)
    if (grads64[i].defined()) worst_grad = std::max(worst_grad, norm_relative_error(grads32[i], grads64[i]));
  const double states_error = norm_relative_error(states32, states64), final_error = norm_relative_error(final32, final64);
  std::cout << "[kernels][gdn] chunk_state_scan " << (starts.empty() ? "" : "with starts ") << "Dk=" << Dk
            << " Dv=" << Dv << " N=" << N << ": states " << states_error << ", final " << final_error
            << ", worst input gradient " << worst_grad << std::endl;
  CHECK(states_error <= 1e-5);
  CHECK(final_error <= 1e-5);
  CHECK(worst_grad <= 1e-4);
  return grads32.back();
}

}  // namespace

TEST_CASE("kernel policy: PRIME_KERNELS is auto or torch, and CPU tensors never take the kernels", "[kernels]") {
  {
    const test::ScopedEnv wrong("PRIME_KERNELS", "cuda-please");
    CHECK_THROWS_AS(kernels::policy(), UserError);
    CHECK_THROWS_WITH(kernels::policy(), Catch::Contains("PRIME_KERNELS=cuda-please"));
  }
  {
    const test::ScopedEnv torch_ops("PRIME_KERNELS", "torch");
    CHECK(kernels::policy() == kernels::Policy::Torch);
  }
  const test::ScopedEnv unset("PRIME_KERNELS", nullptr);
  CHECK(kernels::policy() == kernels::Policy::Auto);
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    CHECK(kernels::policy() == kernels::Policy::Torch);
  }
  CHECK(kernels::policy() == kernels::Policy::Auto);
  CHECK_FALSE(kernels::gdn_chunk_kernels_apply(at::zeros({1, 4, 2, 64}), 64));
  const at::Tensor x = at::zeros({1, 4, 2, 64}), gate = at::zeros({1, 4, 2});
  CHECK_FALSE(kernels::gdn_chunk_forward_apply(x, x, x, gate, gate, at::Tensor(), 64, at::Tensor()));
}

TEST_CASE("GDN kernels: (I + A)^-1 and the chunk-state scan equal float64 references, gradients too",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  at::manual_seed(7);
  for (int64_t chunk : {64, 37}) {
    // Entries as large as GDN's (beta k.k decay, |.| < 1) make a well-conditioned unit triangle.
    const at::Tensor A = (at::rand({3, 5, chunk, chunk}, at::kDouble) * 2 - 1) * 0.2;
    const at::Tensor want = at::linalg_inv(A.tril(-1) + at::eye(chunk, at::kDouble));
    const at::Tensor A_cuda = A.to(cuda, at::kFloat).requires_grad_(true);
    const at::Tensor T = kernels::unit_lower_inverse(A_cuda);
    const double forward = norm_relative_error(T, want);
    const at::Tensor weight = at::randn({3, 5, chunk, chunk}, at::kDouble);
    const at::Tensor A64 = A.clone().requires_grad_(true);
    const at::Tensor grad_want = torch::autograd::grad(
        {(at::linalg_inv(A64.tril(-1) + at::eye(chunk, at::kDouble)) * weight).sum()}, {A64})[0];
    const at::Tensor grad = torch::autograd::grad({(T * weight.to(cuda, at::kFloat)).sum()}, {A_cuda})[0];
    const double backward = norm_relative_error(grad, grad_want);
    std::cout << "[kernels][gdn] unit_lower_inverse C=" << chunk << ": T " << forward << ", dA "
              << backward << std::endl;
    CHECK(forward <= 1e-5);
    CHECK(backward <= 1e-5);
  }
  for (const auto& [Dk, Dv, N] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {32, 32, 5}, {64, 100, 4}, {128, 128, 3}, {256, 64, 2}, {64, 96, 7}})
    check_scan(Dk, Dv, N, {}, cuda);
}

TEST_CASE("GDN chunked core on CUDA: the kernels give the torch-ops form's output, state and gradients",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;  // the torch-ops references run without TF32
  const at::Device cuda(at::kCUDA, 0);
  // Chunks of 32 and 48 too (the kernels' chunk is the caller's), and a long sequence (65 chunks:
  // the walk's rounding adds up).
  for (const auto& [B, T, H, D, chunk] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>>{
           {2, 200, 3, 64, 64}, {1, 130, 2, 128, 64}, {2, 192, 2, 32, 64}, {1, 70, 1, 256, 64},
           {1, 100, 2, 128, 32}, {1, 100, 2, 64, 48}, {1, 4160, 1, 128, 64}}) {
    const CoreInputs in = random_core_inputs(B, T, H, D, 11 + T);
    const at::Tensor out_weight = at::randn({B, T, H, D}, at::kDouble);
    const at::Tensor state_weight = at::randn({B, H, D, D}, at::kDouble);
    const at::Tensor q = in.q.to(cuda, at::kFloat);
    REQUIRE(kernels::gdn_chunk_kernels_apply(q, chunk));
    CoreRun torch_ops;
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      torch_ops = run_core(as_leaves(in, cuda, at::kFloat), chunk, out_weight, state_weight);
    }
    const CoreRun reference = run_core(as_leaves(in, at::kCPU, at::kDouble), chunk, out_weight, state_weight);
    // Training takes the fused forward and its written-out backward; PRIME_GDN_FUSED_FORWARD=0
    // the composite form (the torch ops around the two kernels).
    for (const bool fused : {true, false}) {
      const test::ScopedEnv form("PRIME_GDN_FUSED_FORWARD", fused ? "1" : "0");
      const at::Tensor g = q.select(-1, 0);
      REQUIRE(kernels::gdn_chunk_fused_apply(q, q, q, g, g, at::Tensor(), chunk, at::Tensor()) == fused);
      const CoreRun with_kernels = run_core(as_leaves(in, cuda, at::kFloat), chunk, out_weight, state_weight);
      const double out_error = norm_relative_error(with_kernels.out, torch_ops.out);
      const double state_error = norm_relative_error(with_kernels.final_state, torch_ops.final_state);
      const double worst_grad = worst_gradient_error(with_kernels, torch_ops);
      const double worst_grad_f64 = worst_gradient_error(with_kernels, reference);
      const double out_f64 = norm_relative_error(with_kernels.out, reference.out);
      std::cout << "[kernels][gdn] core (" << (fused ? "fused" : "composite") << ") B=" << B << " T=" << T
                << " H=" << H << " D=" << D << " chunk=" << chunk << ": vs torch ops out " << out_error << ", state "
                << state_error << ", worst gradient " << worst_grad << "; vs float64 out " << out_f64
                << ", worst gradient " << worst_grad_f64 << std::endl;
      CHECK(out_error <= 1e-4);
      CHECK(state_error <= 1e-4);
      CHECK(worst_grad <= 1e-4);
      CHECK(out_f64 <= 1e-4);
      CHECK(worst_grad_f64 <= 1e-4);
    }
  }
}

TEST_CASE("GDN kernels: the chunk-state scan with document starts equals a float64 loop that resets there",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  at::manual_seed(17);
  // Resets at the first chunk, at two neighbours, and none at the last: both walk directions.
  const std::vector<bool> starts = {true, false, true, true, false, false};
  for (const auto& [Dk, Dv] : std::vector<std::pair<int64_t, int64_t>>{{32, 32}, {64, 100}, {128, 128}, {256, 64}}) {
    const at::Tensor d_initial = check_scan(Dk, Dv, static_cast<int64_t>(starts.size()), starts, cuda);
    // The initial state never reaches anything (chunk 0 resets): its gradient is exactly zero.
    CHECK(d_initial.abs().max().item<double>() == 0.0);
  }
}

TEST_CASE("GDN varlen core on CUDA: the kernels give the torch-ops form's packed output and gradients",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  const at::Device cuda(at::kCUDA, 0);
  // Ragged documents (1, 63, 64, 65, 200 tokens around the 64-token chunk), a one-document row.
  const std::vector<std::vector<int64_t>> rows = {{1, 63, 64, 65, 107}, {200, 1, 99}, {300}};
  const int64_t T = 300, B = static_cast<int64_t>(rows.size());
  const at::Tensor positions = test::document_positions(rows);
  const model::Documents on_cuda = model::make_documents(positions, cuda);
  const model::Documents on_cpu = model::make_documents(positions, at::kCPU);
  for (const auto& [H, D] : std::vector<std::pair<int64_t, int64_t>>{{3, 64}, {2, 128}, {2, 32}}) {
    const CoreInputs in = random_core_inputs(B, T, H, D, 23 + D);
    const at::Tensor out_weight = at::randn({B, T, H, D}, at::kDouble);
    const auto run = [&](const model::Documents& documents, const at::Device& device, at::ScalarType type) {
      std::vector<at::Tensor> leaves = as_leaves(in, device, type);
      leaves.pop_back();  // packed documents start from zero states
      const at::Tensor out = model::gated_delta_rule_varlen(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4],
                                                            documents.chunks(64), 64);
      CoreRun result{out.detach(), at::Tensor(), {}};
      for (const at::Tensor& grad : torch::autograd::grad({(out * out_weight.to(out.options())).sum()}, leaves))
        result.grads.push_back(grad.detach());
      return result;
    };
    REQUIRE(kernels::gdn_chunk_kernels_apply(in.q.to(cuda, at::kFloat), 64));
    CoreRun torch_ops;
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      torch_ops = run(on_cuda, cuda, at::kFloat);
    }
    const CoreRun reference = run(on_cpu, at::kCPU, at::kDouble);
    for (const bool fused : {true, false}) {  // the fused form with its backward, and the composite
      const test::ScopedEnv form("PRIME_GDN_FUSED_FORWARD", fused ? "1" : "0");
      const CoreRun with_kernels = run(on_cuda, cuda, at::kFloat);
      const double out_error = norm_relative_error(with_kernels.out, torch_ops.out);
      const double out_f64 = norm_relative_error(with_kernels.out, reference.out);
      const double worst_grad = worst_gradient_error(with_kernels, torch_ops);
      const double worst_grad_f64 = worst_gradient_error(with_kernels, reference);
      std::cout << "[kernels][gdn] varlen core (" << (fused ? "fused" : "composite") << ") H=" << H << " D=" << D
                << " rows 1,63,64,65,107 / 200,1,99 / 300: vs torch ops out " << out_error << ", worst gradient "
                << worst_grad << "; vs float64 out " << out_f64 << ", worst gradient " << worst_grad_f64 << std::endl;
      CHECK(out_error <= 1e-4);
      CHECK(worst_grad <= 1e-4);
      CHECK(out_f64 <= 1e-4);
      CHECK(worst_grad_f64 <= 1e-4);
    }
  }
}

TEST_CASE("GDN fused chunked forward on CUDA: without a gradient it gives the torch-ops form's output and state",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  const at::Device cuda(at::kCUDA, 0);
  // T not a multiple of 64 (and one that is), every head dim, with and without an initial state;
  // chunk 32 too (the fused form's 64-step chunks give the same result); 130 chunks.
  for (const auto& [B, T, H, D, chunk, with_state] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool>>{{2, 200, 3, 64, 64, true},
                                                                                   {1, 130, 2, 128, 64, true},
                                                                                   {2, 192, 2, 32, 64, false},
                                                                                   {1, 70, 1, 256, 64, true},
                                                                                   {3, 256, 2, 128, 32, false},
                                                                                   {1, 1, 2, 64, 64, true},
                                                                                   {1, 8300, 2, 128, 64, true}}) {
    const CoreInputs in = random_core_inputs(B, T, H, D, 41 + T + D);
    const auto run = [&](const at::Device& device, at::ScalarType type) {
      const auto on = [&](const at::Tensor& t) { return t.to(device, type); };
      const at::Tensor state = with_state ? on(in.state) : at::Tensor();
      return model::gated_delta_rule_chunked(on(in.q), on(in.k), on(in.v), on(in.g), on(in.beta), state, chunk);
    };
    const at::Tensor q = in.q.to(cuda, at::kFloat);
    // Only a call that records no gradient takes the fused form.
    CHECK_FALSE(kernels::gdn_chunk_forward_apply(q.detach().requires_grad_(true), q, q, q.select(-1, 0),
                                                 q.select(-1, 0), at::Tensor(), chunk, at::Tensor()));
    const at::NoGradGuard no_grad;
    REQUIRE(kernels::gdn_chunk_forward_apply(q, q, q, q.select(-1, 0), q.select(-1, 0), at::Tensor(), chunk,
                                             at::Tensor()));
    const auto fused = run(cuda, at::kFloat);
    std::pair<at::Tensor, at::Tensor> torch_ops;
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      torch_ops = run(cuda, at::kFloat);
    }
    const auto reference = run(at::kCPU, at::kDouble);
    const double out_error = norm_relative_error(fused.first, torch_ops.first);
    const double state_error = norm_relative_error(fused.second, torch_ops.second);
    const double out_f64 = norm_relative_error(fused.first, reference.first);
    const double state_f64 = norm_relative_error(fused.second, reference.second);
    std::cout << "[kernels][gdn] fused forward B=" << B << " T=" << T << " H=" << H << " D=" << D << " chunk=" << chunk
              << (with_state ? " with" : " without") << " initial state: vs torch ops out " << out_error << ", state "
              << state_error << "; vs float64 out " << out_f64 << ", state " << state_f64 << std::endl;
    CHECK(out_error <= 1e-4);
    CHECK(state_error <= 1e-4);
    CHECK(out_f64 <= 1e-4);
    CHECK(state_f64 <= 1e-4);
  }
}

TEST_CASE("GDN fused forward over packed documents on CUDA: it gives the torch-ops form's packed output",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  const at::Device cuda(at::kCUDA, 0);
  const std::vector<std::vector<int64_t>> rows = {{1, 63, 64, 65, 107}, {200, 1, 99}, {300}};
  const int64_t T = 300, B = static_cast<int64_t>(rows.size());
  const at::Tensor positions = test::document_positions(rows);
  const model::Documents on_cuda = model::make_documents(positions, cuda);
  const model::Documents on_cpu = model::make_documents(positions, at::kCPU);
  const at::NoGradGuard no_grad;
  for (const auto& [H, D] : std::vector<std::pair<int64_t, int64_t>>{{3, 64}, {2, 128}}) {
    const CoreInputs in = random_core_inputs(B, T, H, D, 59 + D);
    const auto run = [&](const model::Documents& documents, const at::Device& device, at::ScalarType type) {
      const auto on = [&](const at::Tensor& t) { return t.to(device, type); };
      return model::gated_delta_rule_varlen(on(in.q), on(in.k), on(in.v), on(in.g), on(in.beta),
                                            documents.chunks(64), 64);
    };
    const at::Tensor fused = run(on_cuda, cuda, at::kFloat);
    at::Tensor torch_ops;
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      torch_ops = run(on_cuda, cuda, at::kFloat);
    }
    const at::Tensor reference = run(on_cpu, at::kCPU, at::kDouble);
    const double out_error = norm_relative_error(fused, torch_ops), out_f64 = norm_relative_error(fused, reference);
    std::cout << "[kernels][gdn] fused forward, packed documents H=" << H << " D=" << D << ": vs torch ops out "
              << out_error << "; vs float64 out " << out_f64 << std::endl;
    CHECK(out_error <= 1e-4);
    CHECK(out_f64 <= 1e-4);
  }
}

TEST_CASE("GDN bf16 fused forward: bf16 q k v within bf16 accuracy of float64 and an fp32 state", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const at::NoGradGuard no_grad;
  {  // What the bf16 form serves: bf16 q, k, v with fp32 gates and state, head dim <= 128.
    const at::Tensor q = at::randn({1, 70, 2, 64}, at::TensorOptions().device(cuda).dtype(at::kBFloat16));
    const at::Tensor gate = at::rand({1, 70, 2}, q.options().dtype(at::kFloat));
    CHECK(kernels::gdn_chunk_forward_apply(q, q, q, gate, gate, at::Tensor(), 64, at::Tensor()));
    CHECK_FALSE(kernels::gdn_chunk_forward_apply(q, q, q, gate.to(at::kBFloat16), gate, at::Tensor(), 64, at::Tensor()));
    CHECK_FALSE(kernels::gdn_chunk_forward_apply(q, q, q.to(at::kFloat), gate, gate, at::Tensor(), 64, at::Tensor()));
    const at::Tensor wide = at::randn({1, 70, 2, 256}, q.options());
    CHECK_FALSE(kernels::gdn_chunk_forward_apply(wide, wide, wide, gate, gate, at::Tensor(), 64, at::Tensor()));
  }
  // The bf16-rounded operands in float64 are the reference: what is measured is the kernels'
  // own rounding (bf16 intermediates: W, U', U_n, K_d, T, the scores, the states entering each
  // chunk), not the inputs'.
  for (const auto& [B, T, H, D, with_state] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>>{
           {2, 200, 3, 64, true}, {1, 130, 2, 128, true}, {2, 192, 2, 32, false}, {3, 256, 2, 128, false},
           {1, 1, 2, 64, true}, {1, 8300, 2, 128, true}}) {
    CoreInputs in = random_core_inputs(B, T, H, D, 83 + T + D);
    for (at::Tensor* t : {&in.q, &in.k, &in.v}) *t = t->to(at::kBFloat16).to(at::kDouble);
    for (at::Tensor* t : {&in.g, &in.beta, &in.state}) *t = t->to(at::kFloat).to(at::kDouble);
    const at::Tensor state = with_state ? in.state.to(cuda, at::kFloat) : at::Tensor();
    const auto ours = model::gated_delta_rule_chunked(in.q.to(cuda, at::kBFloat16), in.k.to(cuda, at::kBFloat16),
                                                      in.v.to(cuda, at::kBFloat16), in.g.to(cuda, at::kFloat),
                                                      in.beta.to(cuda, at::kFloat), state, 64);
    REQUIRE(ours.first.scalar_type() == at::kBFloat16);
    REQUIRE(ours.second.scalar_type() == at::kFloat);
    const auto reference = model::gated_delta_rule_chunked(in.q, in.k, in.v, in.g, in.beta,
                                                           with_state ? in.state : at::Tensor(), 64);
    const double out_error = norm_relative_error(ours.first.to(at::kDouble), reference.first);
    const double state_error = norm_relative_error(ours.second, reference.second);
    const double out_worst = (ours.first.cpu().to(at::kDouble) - reference.first).abs().max().item<double>() /
                             reference.first.abs().max().item<double>();
    std::cout << "[kernels][gdn] bf16 fused forward B=" << B << " T=" << T << " H=" << H << " D=" << D
              << (with_state ? " with" : " without") << " initial state: vs float64 out " << out_error
              << " (worst element " << out_worst << " of the largest), state " << state_error << std::endl;
    CHECK(out_error <= 6e-3);  // measured on an H200: <= 3.6e-3, worst element <= 8.3e-3, state <= 3.3e-3
    CHECK(out_worst <= 1.5e-2);
    CHECK(state_error <= 6e-3);
  }
}

TEST_CASE("GDN bf16 fused forward over packed documents: within bf16 accuracy of float64",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const std::vector<std::vector<int64_t>> rows = {{1, 63, 64, 65, 107}, {200, 1, 99}, {300}};
  const int64_t T = 300, B = static_cast<int64_t>(rows.size());
  const at::Tensor positions = test::document_positions(rows);
  const model::Documents on_cuda = model::make_documents(positions, cuda);
  const model::Documents on_cpu = model::make_documents(positions, at::kCPU);
  const at::NoGradGuard no_grad;
  // With batch x heads at least four blocks per SM, the walks get one segment slot: each block then
  // walks every segment of its row in turn (restart_segments.cuh), its buffers reused across them.
  const int64_t sms = at::cuda::getDeviceProperties(0)->multiProcessorCount;
  const int64_t many = (4 * sms + B - 1) / B + 1;
  for (const auto& [H, D] : std::vector<std::pair<int64_t, int64_t>>{{2, 128}, {many, 32}, {many, 128}}) {
    CoreInputs in = random_core_inputs(B, T, H, D, 97 + H);
    for (at::Tensor* t : {&in.q, &in.k, &in.v}) *t = t->to(at::kBFloat16).to(at::kDouble);
    for (at::Tensor* t : {&in.g, &in.beta}) *t = t->to(at::kFloat).to(at::kDouble);
    const at::Tensor reference =
        model::gated_delta_rule_varlen(in.q, in.k, in.v, in.g, in.beta, on_cpu.chunks(64), 64);
    std::vector<const char*> walks = {"split", "fused"};  // each walk restarts at each document's first chunk
    if (kernels::gdn_bf16_wgmma_walk_runs(D, cuda)) walks.push_back("wgmma");
    for (const char* walk : walks) {
      const test::ScopedEnv form("PRIME_GDN_FORWARD_WALK", walk);
      const at::Tensor ours = model::gated_delta_rule_varlen(
          in.q.to(cuda, at::kBFloat16), in.k.to(cuda, at::kBFloat16), in.v.to(cuda, at::kBFloat16),
          in.g.to(cuda, at::kFloat), in.beta.to(cuda, at::kFloat), on_cuda.chunks(64), 64);
      const double out_error = norm_relative_error(ours.to(at::kDouble), reference);
      std::cout << "[kernels][gdn] bf16 fused forward, " << walk << " walk, packed documents H=" << H << " D=" << D
                << ": vs float64 out " << out_error << std::endl;
      CHECK(ours.scalar_type() == at::kBFloat16);
      CHECK(out_error <= 6e-3);
    }
  }
}

namespace {

// GDN's bf16 forward on the same bf16 operands under two walks (PRIME_GDN_FORWARD_WALK), each within
// 6e-3 of float64 and the two within `apart` of each other, at (B, T, H, D, with an initial state);
// seed + T + D seeds the operands. Outputs poisoned.
void check_two_walks(const char* first, const char* second,
                     const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>>& shapes, int64_t seed,
                     double apart) {
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const at::NoGradGuard no_grad;
  for (const auto& [B, T, H, D, with_state] : shapes) {
    CoreInputs in = random_core_inputs(B, T, H, D, seed + T + D);
    for (at::Tensor* t : {&in.q, &in.k, &in.v}) *t = t->to(at::kBFloat16).to(at::kDouble);
    for (at::Tensor* t : {&in.g, &in.beta, &in.state}) *t = t->to(at::kFloat).to(at::kDouble);
    const at::Tensor state = with_state ? in.state.to(cuda, at::kFloat) : at::Tensor();
    const auto reference = model::gated_delta_rule_chunked(in.q, in.k, in.v, in.g, in.beta,
                                                           with_state ? in.state : at::Tensor(), 64);
    std::pair<at::Tensor, at::Tensor> walks[2];
    for (const int which : {0, 1}) {
      const char* name = which == 0 ? first : second;
      const test::ScopedEnv walk("PRIME_GDN_FORWARD_WALK", name);
      walks[which] = model::gated_delta_rule_chunked(in.q.to(cuda, at::kBFloat16), in.k.to(cuda, at::kBFloat16),
                                                     in.v.to(cuda, at::kBFloat16), in.g.to(cuda, at::kFloat),
                                                     in.beta.to(cuda, at::kFloat), state, 64);
      const double out_error = norm_relative_error(walks[which].first.to(at::kDouble), reference.first);
      const double state_error = norm_relative_error(walks[which].second, reference.second);
      std::cout << "[kernels][gdn] bf16 forward, " << name << " walk, B=" << B << " T=" << T << " H=" << H
                << " D=" << D << ": vs float64 out " << out_error << ", state " << state_error << std::endl;
      CHECK(out_error <= 6e-3);
      CHECK(state_error <= 6e-3);
    }
    const double out_apart = norm_relative_error(walks[1].first.to(at::kDouble), walks[0].first.to(at::kDouble));
    const double state_apart = norm_relative_error(walks[1].second, walks[0].second);
    std::cout << "[kernels][gdn] bf16 forward, " << second << " vs " << first << " walk: out " << out_apart
              << ", state " << state_apart << std::endl;
    CHECK(out_apart <= apart);
    CHECK(state_apart <= apart);
  }
}

}  // namespace

TEST_CASE("GDN bf16 fused forward: the fused walk and the split walk agree, PRIME_GDN_FORWARD_WALK picks one",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  // The fused walk rounds differently (diag(e^G) applied to Q S in fp32, the decay on U_n's rows
  // instead of K's), so the two agree within their bf16 rounding, not bit for bit.
  check_two_walks("split", "fused", {{2, 200, 3, 64, true}, {1, 130, 2, 128, true}, {2, 192, 2, 32, false},
                                     {1, 1000, 2, 128, false}, {1, 1, 2, 64, true}, {2, 37, 2, 128, true}},
                  211, 6e-3);
  const at::Tensor q = at::randn({1, 70, 2, 64}, at::TensorOptions().device(cuda).dtype(at::kBFloat16));
  const at::Tensor gate = at::rand({1, 70, 2}, q.options().dtype(at::kFloat));
  const test::ScopedEnv wrong("PRIME_GDN_FORWARD_WALK", "both");
  CHECK_THROWS_AS(model::gated_delta_rule_chunked(q, q, q, gate, gate, at::Tensor(), 64), UserError);
}

TEST_CASE("GDN bf16 fused forward: the walk on the warpgroup MMAs against float64 and the fused walk",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  // The warpgroup MMAs are Hopper's, in a build with sm_90a code (the probe GKA's warpgroup solve asks).
  if (at::cuda::getDeviceProperties(0)->major != 9 || !kernels::gka_forward_wgmma_available(cuda)) {
    CHECK_FALSE(kernels::gdn_bf16_wgmma_walk_runs(128, cuda));
    return;
  }
  REQUIRE(kernels::gdn_bf16_wgmma_walk_runs(128, cuda));
  CHECK_FALSE(kernels::gdn_bf16_wgmma_walk_runs(64, cuda));
  // The same products in the same order with the same roundings as the fused walk (mma.sync), on other
  // instructions: only the order of the sums inside the MMAs may differ, so the two stay closer to
  // each other than to float64 (the fused and the split walk, which round differently, measured
  // 1.0-1.1e-3 apart).
  check_two_walks("fused", "wgmma", {{1, 130, 2, 128, true}, {1, 1000, 2, 128, false}, {2, 37, 2, 128, true},
                                     {1, 1, 2, 128, true}, {2, 200, 3, 128, true}},
                  307, 2e-3);
  // Over packed documents: the bf16 packed-documents test runs this walk too.
  const at::Tensor q = at::randn({1, 70, 2, 64}, at::TensorOptions().device(cuda).dtype(at::kBFloat16));
  const at::Tensor gate = at::rand({1, 70, 2}, q.options().dtype(at::kFloat));
  const test::ScopedEnv wrong("PRIME_GDN_FORWARD_WALK", "wgmma");  // head dim 64: refused, not run
  CHECK_THROWS_AS(model::gated_delta_rule_chunked(q, q, q, gate, gate, at::Tensor(), 64), UserError);
}

TEST_CASE("PRIME_SSM_CORE=bf16: fp32 calls take the bf16 fused forward with and without autograd, fp32 out",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  const CoreInputs in = random_core_inputs(2, 300, 2, 128, 113);
  const auto run = [&](bool record) {
    std::vector<at::Tensor> leaves;
    for (const at::Tensor* t : {&in.q, &in.k, &in.v, &in.g, &in.beta, &in.state})
      leaves.push_back(t->to(cuda, at::kFloat).requires_grad_(record));
    auto [out, final_state] =
        model::gated_delta_rule_chunked(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], 64);
    return std::make_pair(out.detach(), final_state.detach());
  };
  const auto fp32 = run(false);
  const auto reference = model::gated_delta_rule_chunked(in.q, in.k, in.v, in.g, in.beta, in.state, 64);
  std::pair<at::Tensor, at::Tensor> bf16, under_autograd;
  {
    const test::ScopedEnv core("PRIME_SSM_CORE", "bf16");
    const test::ScopedEnv walk("PRIME_GDN_FORWARD_WALK", "split");  // what training's forward takes
    bf16 = run(false);
    under_autograd = run(true);  // records a gradient: the bf16 forward for training (split walk and inverse)
  }
  const double bf16_f64 = norm_relative_error(bf16.first, reference.first);
  const double bf16_fp32 = norm_relative_error(bf16.first, fp32.first);
  const double state_f64 = norm_relative_error(bf16.second, reference.second);
  const double autograd_f64 = norm_relative_error(under_autograd.first, reference.first);
  std::cout << "[kernels][gdn] PRIME_SSM_CORE=bf16: out vs float64 " << bf16_f64 << " (fp32 path " << bf16_fp32
            << "), state " << state_f64 << "; under autograd vs float64 " << autograd_f64 << std::endl;
  CHECK(bf16.first.scalar_type() == at::kFloat);
  CHECK(bf16_fp32 > 1e-4);  // the bf16 form ran: its rounding shows
  CHECK(bf16_f64 <= 1e-2);  // q, k, v's own rounding to bf16 included
  CHECK(state_f64 <= 1e-2);
  CHECK(autograd_f64 <= 1e-2);
  // Under autograd the prep forms W and U' with (I + A)^-1 split into bf16 hi + lo (what the backward
  // reads; without a gradient it is rounded to bf16): another arithmetic, so not the same bits, and
  // no less accurate (what it removes is the inverse's own rounding; q, k, v's dominates both).
  const double state_autograd_f64 = norm_relative_error(under_autograd.second, reference.second);
  std::cout << "[kernels][gdn] PRIME_SSM_CORE=bf16 under autograd: state vs float64 " << state_autograd_f64
            << "; vs the form without a gradient: out " << norm_relative_error(under_autograd.first, bf16.first)
            << ", state " << norm_relative_error(under_autograd.second, bf16.second) << std::endl;
  CHECK(state_autograd_f64 <= 1e-2);
  CHECK(autograd_f64 <= 1.05 * bf16_f64);
  CHECK(state_autograd_f64 <= 1.05 * state_f64);
}

// Training on the bf16 forward: bf16 q, k, v leaves, and fp32 ones under PRIME_SSM_CORE=bf16 (rounded
// inside; the output, its gradient and the leaves' gradients fp32). The forward's split walk keeps its
// bf16 per-chunk results and the written-out backward runs in fp32 on them. Against float64 autograd on
// the same bf16-rounded inputs (and the same output weight: bf16-rounded for bf16 leaves, whose output
// is bf16), each gradient (q, k, v, g, beta, the initial state) within max(1e-2, 4 x its bf16
// sensitivity), how far the float64 gradient moves when q, k, v and the output's weight carry bf16-sized
// rounding (experiments/gdn_bf16_backward: up to 1.6x of it), and sum(dg g) per head, what a decay
// parameter's gradient sums (the study's hard cases, 4K tokens with slowly decaying gates, within 0.75
// of the bound with training's split inverse; one such shape here, other inputs). T not
// a multiple of 64 (the backward then copies q, k, v and dO per chunk) and multiples of 64 (it reads them
// in place), D = 32, 64, 128, with and without an initial state, packed documents (chunk starts),
// and the graph holds the bf16 function's node. The forward walk asked for is the mma.sync fused one
// (training then takes the split walk) and, at D = 128 on a Hopper GPU, the warpgroup one (which keeps the
// backward's states and U_n as it walks). Each case runs the backward's two walks (PRIME_GDN_BACKWARD_WALK
// split and fused) and the default (unset), each held to the bound; the keys' gradient differs between the
// two walks (the fused walk ran), and unset gives the fused walk's where its block fits the GPU, else the
// split one's.
namespace {

void check_bf16_training(int64_t B, int64_t T, int64_t H, int64_t D, bool with_state, const std::vector<bool>& starts,
                         const at::Device& cuda, bool slow_decays = false) {
  const char* names[] = {"q", "k", "v", "g", "beta", "state", "sum(dg g) per head"};
  CoreInputs in = random_core_inputs(B, T, H, D, 131 + T + D);
  if (slow_decays) in.g = in.g / 100;  // a memory of thousands of steps
  for (at::Tensor* t : {&in.q, &in.k, &in.v}) *t = t->to(at::kBFloat16).to(at::kDouble);
  for (at::Tensor* t : {&in.g, &in.beta, &in.state}) *t = t->to(at::kFloat).to(at::kDouble);
  at::Tensor flags, flags_cuda;
  if (!starts.empty()) {
    flags = at::tensor(std::vector<int64_t>(starts.begin(), starts.end())).to(at::kBool);
    flags_cuda = flags.to(cuda);
  }
  const at::Tensor out_weight = at::randn({B, T, H, D}, at::kDouble);
  const at::Tensor state_weight = at::randn({B, H, D, D}, at::kDouble).to(at::kFloat).to(at::kDouble);
  // Float64 gradients of <out, weight> + <final state, state_weight> (no initial state where without).
  const auto float64_grads = [&](const CoreInputs& x, const at::Tensor& weight) {
    std::vector<at::Tensor> leaves = as_leaves(x, at::kCPU, at::kDouble);
    auto [out, final_state] = model::gated_delta_rule_chunked(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4],
                                                              with_state ? leaves[5] : at::Tensor(), 64, flags);
    const at::Tensor loss = (out * weight).sum() + (final_state * state_weight).sum();
    std::vector<at::Tensor> grads = torch::autograd::grad({loss}, leaves, {}, false, false, /*allow_unused=*/true);
    if (!with_state) grads.pop_back();
    grads.push_back((grads[3] * x.g).sum(at::IntArrayRef{0, 1}));  // what a decay parameter's gradient sums
    return grads;
  };
  // One forward walk's runs: the backward's walks, each held to the bound.
  const auto check_walks = [&](bool fp32_leaves, const char* forward_walk, const at::Tensor& weight,
                               const std::vector<at::Tensor>& reference, const std::vector<at::Tensor>& moved) {
    const test::ScopedEnv walk("PRIME_GDN_FORWARD_WALK", forward_walk);
    std::vector<at::Tensor> key_grads;  // per backward walk
    for (const char* asked : {"split", "fused", static_cast<const char*>(nullptr)}) {
      const test::ScopedEnv backward("PRIME_GDN_BACKWARD_WALK", asked);
      const char* backward_walk = asked ? asked : "unset (auto)";
      std::vector<at::Tensor> leaves = as_leaves(in, cuda, at::kFloat);
      if (!fp32_leaves)
        for (int i = 0; i < 3; ++i) leaves[i] = leaves[i].detach().to(at::kBFloat16).requires_grad_(true);
      if (!with_state) leaves.pop_back();
      auto [out, final_state] = model::gated_delta_rule_chunked(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4],
                                                                with_state ? leaves[5] : at::Tensor(), 64, flags_cuda);
      CHECK(test::any_contains(test::graph_node_names(out), "GdnChunkFusedBf16"));
      CHECK(out.scalar_type() == (fp32_leaves ? at::kFloat : at::kBFloat16));
      const at::Tensor loss = (out.to(at::kFloat) * weight.to(cuda, at::kFloat)).sum() +
                              (final_state * state_weight.to(cuda, at::kFloat)).sum();
      std::vector<at::Tensor> grads = torch::autograd::grad({loss}, leaves);
      key_grads.push_back(grads[1]);
      grads.push_back((grads[3].to(at::kDouble).cpu() * in.g).sum(at::IntArrayRef{0, 1}));
      std::ostringstream line;
      line << "[kernels][gdn] trained on the bf16 forward ("
           << (fp32_leaves ? "fp32 leaves, PRIME_SSM_CORE=bf16" : "bf16 leaves") << ", " << forward_walk
           << " forward walk, " << backward_walk << " backward walk) B=" << B << " T=" << T << " H=" << H
           << " D=" << D << (with_state ? "" : " no state") << (starts.empty() ? "" : " chunk starts")
           << (slow_decays ? " slow decays" : "")
           << ": gradients vs float64 (bf16 sensitivity)";
      for (size_t i = 0; i < grads.size(); ++i) {
        if (i < leaves.size()) CHECK(grads[i].scalar_type() == leaves[i].scalar_type());
        const double error = norm_relative_error(grads[i].to(at::kDouble), reference[i]);
        const double sensitivity = norm_relative_error(moved[i], reference[i]);
        const char* name = i + 1 == grads.size() ? names[6] : names[i];
        line << " " << name << " " << error << " (" << sensitivity << ")";
        INFO(forward_walk << " forward walk, " << backward_walk << " backward walk: " << name << " gradient "
                          << error << ", its bf16 sensitivity " << sensitivity);
        CHECK(error <= std::max(1e-2, 4 * sensitivity));
      }
      std::cout << line.str() << std::endl;
    }
    // The fused walk ran: the keys' gradient takes dU from the walk, whose rounding differs. Unset, the
    // fused walk where its block fits (bf16 products, the default).
    CHECK_FALSE(at::equal(key_grads[0], key_grads[1]));
#ifdef PRIME_WITH_CUDA
    const bool fits = kernels::detail::gdn_backward_walk_bf16_fits_device(D, cuda.index());
    CHECK(at::equal(key_grads[2], key_grads[fits ? 1 : 0]));
#endif
  };
  for (const bool fp32_leaves : {false, true}) {
    const at::Tensor weight = fp32_leaves ? out_weight : out_weight.to(at::kBFloat16).to(at::kDouble);
    const std::vector<at::Tensor> reference = float64_grads(in, weight);
    CoreInputs nudged = in;
    at::manual_seed(7 + T);
    const auto nudge = [](const at::Tensor& t) { return t * (1.0 + std::ldexp(1.0, -9) * at::randn_like(t)); };
    nudged.q = nudge(in.q), nudged.k = nudge(in.k), nudged.v = nudge(in.v);
    const std::vector<at::Tensor> moved = float64_grads(nudged, nudge(weight));
    const test::ScopedEnv core("PRIME_SSM_CORE", fp32_leaves ? "bf16" : nullptr);
    std::vector<const char*> forward_walks{"fused"};
#ifdef PRIME_WITH_CUDA
    if (kernels::detail::gdn_forward_bf16_walk_wgmma_runs(D, cuda)) forward_walks.push_back("wgmma");
#endif
    for (const char* forward_walk : forward_walks) check_walks(fp32_leaves, forward_walk, weight, reference, moved);
  }
}

}  // namespace

TEST_CASE("GDN trained on the bf16 forward: gradients within bf16 accuracy of float64", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  check_bf16_training(2, 200, 3, 64, true, {}, cuda);
  check_bf16_training(1, 300, 2, 128, true, {}, cuda);
  check_bf16_training(2, 192, 2, 32, false, {}, cuda);
  check_bf16_training(1, 1100, 2, 128, true, {}, cuda);
  check_bf16_training(2, 320, 2, 64, true, {false, true, false, true, false}, cuda);
  check_bf16_training(1, 320, 2, 128, false, {false, true, false, true, false}, cuda);
  // The study's hard case: the decay parameters' gradient over 4K tokens of slowly decaying gates.
  check_bf16_training(1, 4096, 2, 128, true, {}, cuda, /*slow_decays=*/true);
}

// Small enough for compute-sanitizer: two chunks, the second partial, every kernel of the bf16 forward's
// walks (at D = 128 on a Hopper GPU the warpgroup walk too) and of the backward (the inverse formed again)
// once per chunk; and two full chunks, where the backward's products and rows kernel read q, k, v and dO
// in place (per-chunk views of the time-major tensors) instead of per-chunk copies.
TEST_CASE("GDN trained on the bf16 forward: a small shape for the sanitizer", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  check_bf16_training(1, 100, 1, 32, true, {}, at::Device(at::kCUDA, 0));
  check_bf16_training(1, 100, 1, 128, true, {}, at::Device(at::kCUDA, 0));  // the warpgroup forward walk too
  check_bf16_training(1, 128, 1, 64, false, {}, at::Device(at::kCUDA, 0));
}

TEST_CASE("GDN trained on the bf16 forward: the fused reverse walk refuses fp32 products", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  const CoreInputs in = random_core_inputs(1, 100, 1, 32, 9);
  std::vector<at::Tensor> leaves = as_leaves(in, cuda, at::kFloat);
  for (int i = 0; i < 3; ++i) leaves[i] = leaves[i].detach().to(at::kBFloat16).requires_grad_(true);
  auto [out, final_state] = model::gated_delta_rule_chunked(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4],
                                                            leaves[5], 64, at::Tensor());
  const at::Tensor loss = out.to(at::kFloat).sum() + final_state.sum();
  const test::ScopedEnv walk("PRIME_GDN_BACKWARD_WALK", "fused");
  const test::ScopedEnv products("PRIME_GDN_BACKWARD_PRODUCTS", "fp32");
  CHECK_THROWS_WITH(torch::autograd::grad({loss}, leaves), Catch::Contains("PRIME_GDN_BACKWARD_PRODUCTS=fp32"));
}

// The chain rule's last products after the fused reverse walk in one kernel per chunk each (the value side, dq and
// dk), the value side's kernel alone, or every one on chunk_gemm's launches (PRIME_GDN_BACKWARD_SUMS): the same
// gradients bit for bit, at head dims 64 and 128, T a multiple of 64 (q, k and dO read in place) and not.
TEST_CASE("GDN trained on the bf16 forward: PRIME_GDN_BACKWARD_SUMS settings give the same gradients bit for bit",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const test::ScopedEnv walk("PRIME_GDN_BACKWARD_WALK", "fused");
  for (const auto& [B, T, D] : {std::tuple<int64_t, int64_t, int64_t>{2, 200, 64}, {1, 256, 128}}) {
    const CoreInputs in = random_core_inputs(B, T, 2, D, 31);
    const at::Tensor weight = at::randn({B, T, 2, D}, at::TensorOptions().device(cuda));
    std::vector<std::vector<at::Tensor>> runs;
    for (const char* sums : {"kernels", "value", "products"}) {
      const test::ScopedEnv setting("PRIME_GDN_BACKWARD_SUMS", sums);
      std::vector<at::Tensor> leaves = as_leaves(in, cuda, at::kFloat);
      for (int i = 0; i < 3; ++i) leaves[i] = leaves[i].detach().to(at::kBFloat16).requires_grad_(true);
      auto [out, final_state] = model::gated_delta_rule_chunked(leaves[0], leaves[1], leaves[2], leaves[3],
                                                                leaves[4], leaves[5], 64, at::Tensor());
      const at::Tensor loss = (out.to(at::kFloat) * weight).sum() + final_state.sum();
      runs.push_back(torch::autograd::grad({loss}, leaves));
    }
    const char* names[] = {"q", "k", "v", "g", "beta", "state"};
    for (size_t run = 1; run < runs.size(); ++run)
      for (size_t i = 0; i < runs[0].size(); ++i) {
        INFO("B " << B << " T " << T << " D " << D << ": " << names[i] << " gradient, setting " << run);
        CHECK(at::equal(runs[run][i], runs[0][i]));
      }
  }
}

TEST_CASE("GDN trained on the fused forward: a small shape for the sanitizer", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  const at::Device cuda(at::kCUDA, 0);
  // Two chunks, the second partial; every backward kernel runs once per chunk.
  const CoreInputs in = random_core_inputs(1, 100, 1, 32, 5);
  const at::Tensor out_weight = at::randn({1, 100, 1, 32}, at::kDouble);
  const at::Tensor state_weight = at::randn({1, 1, 32, 32}, at::kDouble);
  REQUIRE(kernels::gdn_chunk_fused_apply(in.q.to(cuda, at::kFloat), in.q.to(cuda, at::kFloat),
                                         in.q.to(cuda, at::kFloat), in.g.to(cuda, at::kFloat),
                                         in.beta.to(cuda, at::kFloat), at::Tensor(), 64, at::Tensor()));
  const CoreRun ours = run_core(as_leaves(in, cuda, at::kFloat), 64, out_weight, state_weight);
  const CoreRun reference = run_core(as_leaves(in, at::kCPU, at::kDouble), 64, out_weight, state_weight);
  CHECK(norm_relative_error(ours.out, reference.out) <= 1e-4);
  CHECK(worst_gradient_error(ours, reference) <= 1e-4);
}

#ifdef PRIME_WITH_CUDA
TEST_CASE("GDN kernels apply only where their blocks fit the device's shared memory", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  const int64_t optin = static_cast<int64_t>(at::cuda::getDeviceProperties(0)->sharedMemPerBlockOptin);
  // At head dim 256 the scan's block takes 174,080 bytes and the fused forward's prep 168,960:
  // an H100/H200 (232,448) fits both, an A100 (166,912) neither, so there the torch form runs.
  const auto q_of = [&](int64_t D) { return at::randn({1, 70, 1, D}, at::TensorOptions().device(cuda)); };
  const at::Tensor q256 = q_of(256), g256 = q256.select(-1, 0);
  CHECK(kernels::gdn_chunk_kernels_apply(q256, 64) == (optin >= 174080));
  CHECK(kernels::gdn_chunk_fused_apply(q256, q256, q256, g256, g256, at::Tensor(), 64, at::Tensor()) ==
        (optin >= 174080));
  const at::Tensor q128 = q_of(128);
  CHECK(kernels::gdn_chunk_kernels_apply(q128, 64));
  // Where they do not apply, the core still runs (the torch form) and matches float64.
  const CoreInputs in = random_core_inputs(1, 70, 1, 256, 8);
  const auto ours = model::gated_delta_rule_chunked(in.q.to(cuda, at::kFloat), in.k.to(cuda, at::kFloat),
                                                    in.v.to(cuda, at::kFloat), in.g.to(cuda, at::kFloat),
                                                    in.beta.to(cuda, at::kFloat), at::Tensor(), 64);
  const auto reference = model::gated_delta_rule_chunked(in.q, in.k, in.v, in.g, in.beta, at::Tensor(), 64);
  CHECK(norm_relative_error(ours.first, reference.first) <= 1e-4);
}
#endif
