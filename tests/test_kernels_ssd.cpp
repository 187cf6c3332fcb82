// kernels/ssd_chunk: Mamba-2's chunked SSD scan with the kernels against its torch-ops form
// (policy Torch, fp32 CUDA) and against a float64 run on the CPU: output, final state and the
// gradients of all six inputs (x, delta, A, Bm, Cm, state). Outputs are poisoned with NaN first,
// so an element a kernel leaves unwritten fails.
#include <catch2/catch.hpp>

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/ssd_chunk/ssd_chunk.h"
#include "model/mamba2.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

using test::norm_relative_error;

struct SsdCase {
  int64_t B, T, H, P, N;
  bool with_state;
  bool strided;       // Bm expanded over heads (head stride 0), x a transposed view
  double a_min, a_max;  // A runs from -a_min to -a_max over the heads
  int64_t chunk;        // what the torch-ops form and the float64 run use
  bool misaligned = false;  // x a view one element into a [B,T,H,P+1] tensor (no 16-byte loads)
  std::vector<int64_t> restarts = {};  // chunks (of `chunk` steps; T a multiple) whose state restarts
};

std::string describe(const SsdCase& c) {
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
         " P=" + std::to_string(c.P) + " N=" + std::to_string(c.N) + (c.with_state ? " with state" : "") +
         (c.strided ? " strided" : "") + " A in -[" + std::to_string(c.a_min) + ", " +
         std::to_string(c.a_max) + "] chunk " + std::to_string(c.chunk) + (c.misaligned ? " misaligned x" : "") +
         (c.restarts.empty() ? "" : " restarts at " + std::to_string(c.restarts.size()) + " chunks");
}

// float64 CPU inputs: x, B, C of unit scale (B and C scaled so C.B is O(1)), delta in (0, 1).
// Bm is [B,T,1,N] when strided (expanded to every head), x is [B,H,T,P] then (transposed).
struct SsdInputs {
  at::Tensor x, delta, A, Bm, Cm, state, y_weight, state_weight;
};
SsdInputs random_inputs(const SsdCase& c, uint64_t seed) {
  at::manual_seed(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  SsdInputs in;
  in.x = c.strided ? at::randn({c.B, c.H, c.T, c.P}, f64)
                   : at::randn({c.B, c.T, c.H, c.P + (c.misaligned ? 1 : 0)}, f64);
  in.delta = at::rand({c.B, c.T, c.H}, f64) * 0.98 + 0.01;
  in.A = c.H == 1 ? at::full({1}, -c.a_max, f64) : -at::linspace(c.a_min, c.a_max, c.H, f64);
  in.Bm = at::randn({c.B, c.T, c.strided ? 1 : c.H, c.N}, f64) / std::sqrt(static_cast<double>(c.N));
  in.Cm = at::randn({c.B, c.T, c.H, c.N}, f64) / std::sqrt(static_cast<double>(c.N)) * 2.0;
  if (c.with_state) in.state = at::randn({c.B, c.H, c.P, c.N}, f64) * 0.5;
  in.y_weight = at::randn({c.B, c.T, c.H, c.P}, f64);
  in.state_weight = at::randn({c.B, c.H, c.P, c.N}, f64);
  return in;
}

struct SsdRun {
  at::Tensor y, final_state;
  std::vector<at::Tensor> grads;  // x, delta, A, Bm, Cm[, state]
  std::string node;               // the autograd node behind y
};

SsdRun run_ssd(const SsdCase& c, const SsdInputs& in, const at::Device& device, at::ScalarType type) {
  std::vector<at::Tensor> leaves;
  for (const at::Tensor* t : {&in.x, &in.delta, &in.A, &in.Bm, &in.Cm, &in.state})
    if (t->defined()) leaves.push_back(t->to(device, type).detach().requires_grad_(true));
  const at::Tensor x = c.strided      ? leaves[0].transpose(1, 2)
                       : c.misaligned ? leaves[0].narrow(3, 1, c.P)
                                      : leaves[0];
  const at::Tensor Bm = c.strided ? leaves[3].expand({c.B, c.T, c.H, c.N}) : leaves[3];
  const at::Tensor state = c.with_state ? leaves[5] : at::Tensor();
  at::Tensor chunk_starts;
  if (!c.restarts.empty()) {
    chunk_starts = at::zeros({c.T / c.chunk}, at::TensorOptions().dtype(at::kBool).device(device));
    for (int64_t chunk : c.restarts) chunk_starts[chunk] = true;
  }
  auto [y, final_state] = model::ssd_chunked(x, leaves[1], leaves[2], Bm, leaves[4], state, c.chunk, chunk_starts);
  SsdRun run{y.detach(), final_state.detach(), {}, y.grad_fn() ? y.grad_fn()->name() : ""};
  const at::Tensor loss = (y * in.y_weight.to(device, type)).sum() +
                          (final_state * in.state_weight.to(device, type)).sum();
  for (const at::Tensor& grad : torch::autograd::grad({loss}, leaves)) run.grads.push_back(grad.detach());
  return run;
}

// Runs one case three ways and checks the kernels' results against the other two.
void check_case(const SsdCase& c, uint64_t seed) {
  const at::Device cuda(at::kCUDA, 0);
  const SsdInputs in = random_inputs(c, seed);
  {
    const at::Tensor x_full = in.x.to(cuda, at::kFloat);
    const at::Tensor x = c.misaligned ? x_full.narrow(3, 1, c.P) : x_full;
    const at::Tensor Bm = in.Bm.to(cuda, at::kFloat);
    REQUIRE(kernels::ssd_chunk_kernels_apply(c.strided ? x.transpose(1, 2) : x, in.delta.to(cuda, at::kFloat),
                                             in.A.to(cuda, at::kFloat),
                                             c.strided ? Bm.expand({c.B, c.T, c.H, c.N}) : Bm,
                                             in.Cm.to(cuda, at::kFloat),
                                             c.with_state ? in.state.to(cuda, at::kFloat) : at::Tensor()));
  }
  const SsdRun kernel = run_ssd(c, in, cuda, at::kFloat);
  SsdRun torch_ops;
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    torch_ops = run_ssd(c, in, cuda, at::kFloat);
  }
  const SsdRun reference = run_ssd(c, in, at::kCPU, at::kDouble);
  // The kernels ran: y comes from their autograd function, the torch form's does not.
  CHECK(kernel.node.find("SsdChunk") != std::string::npos);
  CHECK(torch_ops.node.find("SsdChunk") == std::string::npos);
  const char* names[] = {"x", "delta", "A", "Bm", "Cm", "state"};
  std::string grads_torch, grads_f64;
  double worst_torch = 0, worst_f64 = 0;
  REQUIRE(kernel.grads.size() == reference.grads.size());
  for (size_t i = 0; i < reference.grads.size(); ++i) {
    const double e_torch = norm_relative_error(kernel.grads[i], torch_ops.grads[i]);
    const double e_f64 = norm_relative_error(kernel.grads[i], reference.grads[i]);
    worst_torch = std::max(worst_torch, e_torch);
    worst_f64 = std::max(worst_f64, e_f64);
    grads_torch += std::string(" d") + names[i] + " " + std::to_string(e_torch);
    grads_f64 += std::string(" d") + names[i] + " " + std::to_string(e_f64);
    CHECK(kernel.grads[i].isfinite().all().item<bool>());
  }
  const double y_torch = norm_relative_error(kernel.y, torch_ops.y);
  const double state_torch = norm_relative_error(kernel.final_state, torch_ops.final_state);
  const double y_f64 = norm_relative_error(kernel.y, reference.y);
  const double state_f64 = norm_relative_error(kernel.final_state, reference.final_state);
  std::cout << "[kernels][ssd] " << describe(c) << ": vs torch ops y " << y_torch << ", state " << state_torch
            << "," << grads_torch << "; vs float64 y " << y_f64 << ", state " << state_f64 << "," << grads_f64
            << std::endl;
  CHECK(y_torch <= 1e-4);
  CHECK(state_torch <= 1e-4);
  CHECK(worst_torch <= 1e-4);
  CHECK(y_f64 <= 1e-4);
  CHECK(state_f64 <= 1e-4);
  CHECK(worst_f64 <= 1e-4);
}

}  // namespace

TEST_CASE("SSD chunk kernels: CPU tensors and unserved shapes keep the torch form", "[kernels][ssd]") {
  const at::Tensor x = at::randn({1, 5, 2, 64}), delta = at::rand({1, 5, 2}), A = -at::ones({2});
  const at::Tensor Bm = at::randn({1, 5, 2, 32});
  CHECK_FALSE(kernels::ssd_chunk_kernels_apply(x, delta, A, Bm, Bm, at::Tensor()));
}

TEST_CASE("SSD chunk kernels: where they apply on CUDA", "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const at::Tensor x = at::randn({1, 5, 2, 64}, f32), delta = at::rand({1, 5, 2}, f32), A = -at::ones({2}, f32);
  const at::Tensor Bm = at::randn({1, 5, 2, 128}, f32), state = at::randn({1, 2, 64, 128}, f32);
  CHECK(kernels::ssd_chunk_kernels_apply(x, delta, A, Bm, Bm, state));
  CHECK(kernels::ssd_chunk_kernels_apply(x, delta, A, Bm, Bm, at::Tensor()));
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    CHECK_FALSE(kernels::ssd_chunk_kernels_apply(x, delta, A, Bm, Bm, state));
  }
  const at::Tensor wide = at::randn({1, 5, 2, 129}, f32);
  CHECK_FALSE(kernels::ssd_chunk_kernels_apply(x, delta, A, wide, wide, at::Tensor()));
  CHECK_FALSE(kernels::ssd_chunk_kernels_apply(x.to(at::kDouble), delta.to(at::kDouble), A.to(at::kDouble),
                                               Bm.to(at::kDouble), Bm.to(at::kDouble), at::Tensor()));
  CHECK_FALSE(kernels::ssd_chunk_kernels_apply(x.narrow(1, 0, 0), delta.narrow(1, 0, 0), A, Bm.narrow(1, 0, 0),
                                               Bm.narrow(1, 0, 0), at::Tensor()));
}

TEST_CASE("SSD chunk kernels: output, final state and all six gradients equal the torch form and float64",
          "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;  // the torch-ops reference runs without TF32
  const std::vector<SsdCase> cases = {
      {2, 200, 3, 64, 64, true, false, 0.1, 8.0, 64},     // T not a multiple of 64, mixed decays
      {1, 130, 2, 64, 128, true, false, 0.1, 8.0, 256},   // P != N, the model's default chunk
      {2, 130, 2, 128, 32, false, false, 0.1, 1.0, 64},   // P != N, no initial state
      {2, 1, 3, 64, 128, true, false, 0.1, 8.0, 64},      // one step
      {1, 64, 2, 128, 128, true, false, 0.1, 0.5, 64},    // exactly one chunk, weak decays
      {2, 65, 4, 64, 64, false, true, 2.0, 8.0, 64},      // expanded Bm, strided x, strong decays
      {1, 200, 4, 64, 128, true, true, 0.1, 8.0, 256},    // expanded Bm with a state
      {1, 300, 2, 32, 64, true, false, 0.1, 0.2, 128},    // weak decays, long memory
      {2, 100, 3, 48, 40, true, false, 0.5, 4.0, 64},     // N not a multiple of 16: the SIMT kernels
      {1, 150, 2, 80, 96, true, false, 0.1, 4.0, 64},     // tensor cores: 5 and 6 column tiles
      {2, 70, 2, 16, 16, true, true, 0.5, 2.0, 64},       // tensor cores: the smallest tiles
      {1, 100, 3, 48, 32, true, false, 0.5, 4.0, 128, true},  // x misaligned: element-wise loads
      // Restarts (packed documents): flags per 64-step chunk, per 128-step chunk (every other
      // kernel chunk), and at the first chunk, which drops the initial state (its gradient is 0).
      {1, 384, 3, 64, 128, true, false, 0.1, 4.0, 64, false, {2, 3, 5}},
      {2, 512, 2, 64, 64, true, true, 0.5, 4.0, 128, false, {1, 3}},
      {1, 192, 2, 48, 40, true, false, 0.1, 1.0, 64, false, {0, 2}},  // the SIMT kernels
  };
  uint64_t seed = 31;
  for (const SsdCase& c : cases) check_case(c, seed++);
}

// Small enough for compute-sanitizer's memcheck and racecheck: two chunks, the second padded,
// expanded Bm and an initial state; a partial column tile (P = 40, N = 24: the SIMT kernels) and
// P = 32, N = 16 (the tensor-core kernels); three chunks with a restart.
TEST_CASE("SSD chunk kernels: small shapes for the sanitizer", "[kernels][ssd][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  check_case({1, 70, 2, 40, 24, true, true, 0.5, 2.0, 64}, 3);
  check_case({1, 70, 2, 32, 16, true, true, 0.5, 2.0, 64}, 4);
  check_case({1, 192, 2, 32, 16, true, false, 0.5, 2.0, 64, false, {1}}, 5);  // a restart
}
