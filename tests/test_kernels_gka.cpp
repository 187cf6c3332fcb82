// kernels/gka_solve: GKA's chunked Chebyshev solve on CUDA against the torch-ops iteration (on
// CUDA, fp32) and against float64 on the CPU: the solution, the iterates the backward uses, and
// the gradients of all six inputs through model::gka_detail::chunk_solve. Outputs are poisoned
// with NaN first, so an unwritten element fails.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/gka_solve/gka_solve.h"
#include "model/gka_core.h"
#include "test_helpers.h"
#include "test_kernels_gka_util.h"
#include "test_kernels_util.h"

using namespace prime;
using test::leaves;
using test::norm_relative_error;
using test::random_system;
using test::run_solve;
using test::SolveRun;
using test::System;

namespace {

// The gradients of sum(x * probe) in the six inputs from the backward kernel called directly (the
// iterates from the forward kernel), summed back to the inputs' shapes as ChunkSolve does.
// products: the sweep's arithmetic (the iterates are 3xTF32's either way, as in ChunkSolve).
std::vector<at::Tensor> kernel_backward(const std::vector<at::Tensor>& in, const at::Tensor& probe, int iterations,
                                        kernels::SolveProducts products = kernels::SolveProducts::Tf32x3) {
  const at::NoGradGuard no_grad;
  at::Tensor iterates;
  kernels::gka_chunk_solve(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, iterations, &iterates);
  const kernels::GkaSolveGradients g = kernels::gka_chunk_solve_backward(
      in[0], in[1], in[2], in[3], in[4], in[5], 0.02, iterations, iterates, probe.to(in[0].options()), products);
  std::vector<at::Tensor> out;
  const at::Tensor per_chunk[] = {g.q, g.keys, g.start, g.weights, g.from_start, g.frob};
  for (size_t i = 0; i < in.size(); ++i) {
    REQUIRE(per_chunk[i].size(-1) == in[i].size(-1));
    out.push_back(at::sum_to(per_chunk[i], in[i].sizes()));
  }
  return out;
}

// One shape of the sweep tests: batch, heads, chunks, chunk length, head dim, iterations, H_0 and the
// decays broadcast, and whether float64 checks it too.
struct SweepCase {
  int64_t B, H, n, C, D;
  int iterations;
  bool broadcast;
  bool float64 = false;
};

// PRIME_GKA_BACKWARD_KERNEL set to `value` for the scope.
class ScopedBackwardKernelSwitch : public test::ScopedEnv {
 public:
  explicit ScopedBackwardKernelSwitch(const char* value) : ScopedEnv("PRIME_GKA_BACKWARD_KERNEL", value) {}
};

}  // namespace

TEST_CASE("GKA solve backward kernel: ChunkSolve takes it unless PRIME_GKA_BACKWARD_KERNEL is 0", "[kernels][gka]") {
  {
    const ScopedBackwardKernelSwitch unset(nullptr);
    CHECK(kernels::gka_chunk_solve_backward_enabled());
  }
  {
    const ScopedBackwardKernelSwitch off("0");
    CHECK_FALSE(kernels::gka_chunk_solve_backward_enabled());
  }
  const ScopedBackwardKernelSwitch on("1");
  CHECK(kernels::gka_chunk_solve_backward_enabled());
}

TEST_CASE("GKA solve kernel: never applies to CPU tensors, other dtypes or shapes it does not serve", "[kernels][gka]") {
  CHECK_FALSE(kernels::gka_chunk_solve_apply(at::zeros({1, 2, 64, 128})));
  CHECK_FALSE(kernels::gka_chunk_solve_backward_apply(at::zeros({1, 2, 64, 128}), 30));
  if (!torch::cuda::is_available() || !kernels::built_with_cuda_kernels()) return;
  const auto cuda = at::TensorOptions().device(at::kCUDA, 0);
  CHECK(kernels::gka_chunk_solve_apply(at::zeros({1, 2, 64, 128}, cuda)));
  CHECK_FALSE(kernels::gka_chunk_solve_apply(at::zeros({1, 2, 64, 128}, cuda.dtype(at::kDouble))));
  CHECK_FALSE(kernels::gka_chunk_solve_apply(at::zeros({1, 2, 65, 128}, cuda)));
  CHECK_FALSE(kernels::gka_chunk_solve_apply(at::zeros({1, 2, 64, 100}, cuda)));
  CHECK_FALSE(kernels::gka_chunk_solve_apply(at::zeros({1, 2, 64, 256}, cuda)));
  CHECK(kernels::gka_chunk_solve_backward_apply(at::zeros({1, 2, 64, 128}, cuda), 30));
  CHECK(kernels::gka_chunk_solve_backward_apply(at::zeros({1, 2, 37, 48}, cuda), 1));
  CHECK_FALSE(kernels::gka_chunk_solve_backward_apply(at::zeros({1, 2, 64, 128}, cuda), 0));
  CHECK_FALSE(kernels::gka_chunk_solve_backward_apply(at::zeros({1, 2, 64, 100}, cuda), 30));
  const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
  CHECK_FALSE(kernels::gka_chunk_solve_apply(at::zeros({1, 2, 64, 128}, cuda)));
  CHECK_FALSE(kernels::gka_chunk_solve_backward_apply(at::zeros({1, 2, 64, 128}, cuda), 30));
}

TEST_CASE("GKA solve kernel: solution, iterates and all six gradients equal the torch-ops iteration and float64",
          "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;  // the torch-ops references run without TF32
  const at::Device cuda(at::kCUDA, 0);
  // The forward kernel with the torch-ops reverse sweep (the backward kernel has its own test).
  const ScopedBackwardKernelSwitch sweep_in_torch_ops("0");
  const int iterations = 30;
  // (B, H, n, C, D): full chunks of the 8B shape, chunks padded to 16 rows (37, 23), D = 16
  // (the test hybrids), D = 48 (no 64-wide tiles).
  for (const auto& [B, H, n, C, D] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>>{
           {2, 2, 3, 64, 128}, {1, 3, 2, 37, 16}, {2, 1, 2, 64, 48}, {1, 2, 2, 23, 128}, {1, 1, 3, 64, 64}}) {
    const System system = random_system(B, H, n, C, D, 7 + C + D);
    const at::Tensor probe = at::randn({B, H, n, C, D}, at::kDouble);
    const auto on_cuda = leaves(system, cuda, at::kFloat);
    REQUIRE(kernels::gka_chunk_solve_apply(on_cuda[0]));
    const SolveRun ours = run_solve(on_cuda, probe, iterations, false);
    SolveRun torch_ops;
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      torch_ops = run_solve(leaves(system, cuda, at::kFloat), probe, iterations, false);
    }
    const SolveRun reference = run_solve(leaves(system, at::kCPU, at::kDouble), probe, iterations, true);

    // The iterates the backward reads: iterate i is the solution after i iterations.
    at::Tensor iterates;
    {
      const at::NoGradGuard no_grad;
      kernels::gka_chunk_solve(on_cuda[0], on_cuda[1], on_cuda[2], on_cuda[3], on_cuda[4], on_cuda[5], 0.02,
                               iterations, &iterates);
    }
    REQUIRE(iterates.size(0) == iterations);
    double iterate_error = 0;
    for (int i : {0, 1, 7, iterations - 1}) {
      const at::NoGradGuard no_grad;
      const auto f64 = leaves(system, at::kCPU, at::kDouble);
      const model::gka_detail::ChunkSystem s64{f64[1], f64[2], f64[3], f64[4]};
      const at::Tensor after_i = model::gka_detail::chunk_solve_unrolled(f64[0], s64, f64[5], 0.02, i);
      iterate_error = std::max(iterate_error, norm_relative_error(iterates[i], after_i));
    }

    const double vs_torch = norm_relative_error(ours.x, torch_ops.x);
    const double vs_f64 = norm_relative_error(ours.x, reference.x);
    double grad_vs_torch = 0, grad_vs_f64 = 0;
    for (size_t i = 0; i < reference.grads.size(); ++i) {
      INFO("gradient of input " << i);
      const double a = norm_relative_error(ours.grads[i], torch_ops.grads[i]);
      const double b = norm_relative_error(ours.grads[i], reference.grads[i]);
      CHECK(a <= 1e-4);
      CHECK(b <= 1e-4);
      grad_vs_torch = std::max(grad_vs_torch, a);
      grad_vs_f64 = std::max(grad_vs_f64, b);
    }
    std::cout << "[kernels][gka] solve B=" << B << " H=" << H << " n=" << n << " C=" << C << " D=" << D
              << " N=" << iterations << ": vs torch ops x " << vs_torch << ", worst gradient " << grad_vs_torch
              << "; vs float64 x " << vs_f64 << ", worst gradient " << grad_vs_f64 << ", iterates "
              << iterate_error << std::endl;
    CHECK(vs_torch <= 1e-4);
    CHECK(vs_f64 <= 1e-4);
    CHECK(iterate_error <= 1e-4);
  }
}

// The forward's two kernels where both serve (D a multiple of 32): the mma kernel (the default)
// and the wmma kernel (PRIME_GKA_SOLVE_WMMA=1) give the same x and iterates to fp32 rounding, and
// both stay within 1e-4 of float64, with full and padded chunks.
TEST_CASE("GKA solve kernel: the mma and wmma forward kernels agree with each other and float64",
          "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::NoGradGuard no_grad;
  const int iterations = 30;
  for (const auto& [B, H, n, C, D] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>>{
           {2, 2, 3, 64, 128}, {1, 2, 2, 23, 128}, {1, 3, 2, 37, 96}, {2, 1, 2, 48, 32}}) {
    INFO("B=" << B << " H=" << H << " n=" << n << " C=" << C << " D=" << D);
    const System system = random_system(B, H, n, C, D, 17 + C + D);
    const auto in = leaves(system, at::Device(at::kCUDA, 0), at::kFloat);
    at::Tensor mma_iterates, wmma_iterates;
    const at::Tensor mma =
        kernels::gka_chunk_solve(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, iterations, &mma_iterates);
    at::Tensor wmma;
    {
      const test::ScopedEnv wmma_kernel("PRIME_GKA_SOLVE_WMMA", "1");
      wmma = kernels::gka_chunk_solve(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, iterations, &wmma_iterates);
    }
    const auto f64 = leaves(system, at::kCPU, at::kDouble);
    const model::gka_detail::ChunkSystem s64{f64[1], f64[2], f64[3], f64[4]};
    const at::Tensor reference = model::gka_detail::chunk_solve_unrolled(f64[0], s64, f64[5], 0.02, iterations);
    const double between = norm_relative_error(mma, wmma), iterates_between = norm_relative_error(mma_iterates, wmma_iterates);
    const double mma_error = norm_relative_error(mma, reference), wmma_error = norm_relative_error(wmma, reference);
    std::cout << "[kernels][gka] forward kernels B=" << B << " H=" << H << " n=" << n << " C=" << C << " D=" << D
              << ": mma vs wmma x " << between << ", iterates " << iterates_between << "; vs float64 mma "
              << mma_error << ", wmma " << wmma_error << std::endl;
    CHECK(at::isfinite(mma).all().item<bool>());
    CHECK(at::isfinite(mma_iterates).all().item<bool>());
    CHECK(between <= 1e-5);
    CHECK(iterates_between <= 1e-5);
    CHECK(mma_error <= 1e-4);
    CHECK(wmma_error <= 1e-4);
  }
}

// Small enough for compute-sanitizer's memcheck and racecheck (experiments/kernels/run_gpu.sh):
// one padded chunk, a few iterations, with the iterates.
TEST_CASE("GKA solve kernel: one small chunk equals the torch-ops iteration", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;  // the torch-ops references run without TF32
  const at::NoGradGuard no_grad;
  const System system = random_system(1, 1, 2, 23, 32, 5);
  const auto in = leaves(system, at::Device(at::kCUDA, 0), at::kFloat);
  const int iterations = 3;
  at::Tensor iterates;
  const at::Tensor x = kernels::gka_chunk_solve(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, iterations, &iterates);
  const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
  const model::gka_detail::ChunkSystem s{in[1], in[2], in[3], in[4]};
  CHECK(norm_relative_error(x, model::gka_detail::chunk_solve_unrolled(in[0], s, in[5], 0.02, iterations)) <= 1e-5);
  CHECK(norm_relative_error(iterates[2], model::gka_detail::chunk_solve_unrolled(in[0], s, in[5], 0.02, 2)) <= 1e-5);
}

// The reverse sweep kernel (gka_chunk_solve_backward) against the torch-ops sweep of ChunkSolve
// on CUDA (fp32, policy Torch) and, for two shapes, the unrolled iteration in float64 on the CPU:
// chunks of 64 and of 37 rows (padded to 48), D = 32, 64, 128, N = 1, 2, 30, and H_0 and the
// decays broadcast. With the backward kernel on, the gradients autograd returns under policy
// Auto must be the kernel's, bit for bit (the kernels are deterministic): ChunkSolve's backward
// took the kernel.
TEST_CASE("GKA solve backward kernel: all six gradients equal the torch-ops sweep and float64",
          "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;  // the torch-ops references run without TF32
  const at::Device cuda(at::kCUDA, 0);
  for (const SweepCase& c : std::vector<SweepCase>{{1, 2, 2, 64, 128, 30, false, true},
                                         {2, 1, 2, 64, 64, 2, false, false},
                                         {1, 2, 3, 64, 32, 1, false, false},
                                         {2, 2, 2, 37, 32, 30, false, false},
                                         {1, 1, 2, 37, 128, 2, false, false},
                                         {2, 1, 3, 37, 64, 1, false, false},
                                         {2, 2, 2, 64, 64, 30, true, false},
                                         {1, 2, 2, 37, 128, 30, true, true}}) {
    INFO("B=" << c.B << " H=" << c.H << " n=" << c.n << " C=" << c.C << " D=" << c.D << " N=" << c.iterations
              << (c.broadcast ? " broadcast" : ""));
    const System system = random_system(c.B, c.H, c.n, c.C, c.D, 11 + c.C + c.D + c.iterations, c.broadcast);
    const at::Tensor probe = at::randn({c.B, c.H, c.n, c.C, c.D}, at::kDouble);
    const auto on_cuda = leaves(system, cuda, at::kFloat);
    REQUIRE(kernels::gka_chunk_solve_backward_apply(on_cuda[0], c.iterations));
    // The products ChunkSolve takes unset (3xTF32).
    const std::vector<at::Tensor> direct = kernel_backward(on_cuda, probe, c.iterations, kernels::gka_backward_products());
    SolveRun ours;
    {
      const ScopedBackwardKernelSwitch on("1");
      ours = run_solve(on_cuda, probe, c.iterations, false);
    }
    SolveRun torch_ops;
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      torch_ops = run_solve(leaves(system, cuda, at::kFloat), probe, c.iterations, false);
    }
    double vs_torch = 0, vs_f64 = 0;
    const SolveRun reference =
        c.float64 ? run_solve(leaves(system, at::kCPU, at::kDouble), probe, c.iterations, true) : SolveRun{};
    for (size_t i = 0; i < direct.size(); ++i) {
      INFO("gradient of input " << i);
      REQUIRE(direct[i].sizes() == on_cuda[i].sizes());
      CHECK(at::isfinite(direct[i]).all().item<bool>());  // every element written
      CHECK(at::equal(ours.grads[i], direct[i]));
      const double error = norm_relative_error(direct[i], torch_ops.grads[i]);
      CHECK(error <= 1e-4);
      vs_torch = std::max(vs_torch, error);
      if (c.float64) {
        const double error64 = norm_relative_error(direct[i], reference.grads[i]);
        CHECK(error64 <= 1e-4);
        vs_f64 = std::max(vs_f64, error64);
      }
    }
    std::cout << "[kernels][gka] backward B=" << c.B << " H=" << c.H << " n=" << c.n << " C=" << c.C << " D=" << c.D
              << " N=" << c.iterations << (c.broadcast ? " (H_0, decays broadcast)" : "")
              << ": worst gradient vs torch ops " << vs_torch;
    if (c.float64) std::cout << ", vs float64 " << vs_f64;
    std::cout << std::endl;
  }
}

// The reverse sweep's two kernels where both serve (D a multiple of 32): the mma kernel (the
// default) and the wmma kernel (PRIME_GKA_BACKWARD_WMMA=1) give the same six gradients to fp32
// rounding, with full and padded chunks and H_0 and the decays broadcast.
TEST_CASE("GKA solve backward kernel: the mma and wmma kernels agree", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  for (const SweepCase& c : std::vector<SweepCase>{{2, 2, 2, 64, 128, 30, false},
                                         {1, 2, 3, 37, 96, 30, false},
                                         {2, 1, 2, 23, 32, 2, false},
                                         {1, 2, 2, 64, 64, 30, true}}) {
    INFO("B=" << c.B << " H=" << c.H << " n=" << c.n << " C=" << c.C << " D=" << c.D << " N=" << c.iterations);
    const System system = random_system(c.B, c.H, c.n, c.C, c.D, 23 + c.C + c.D, c.broadcast);
    const at::Tensor probe = at::randn({c.B, c.H, c.n, c.C, c.D}, at::kDouble);
    const auto in = leaves(system, cuda, at::kFloat);
    const std::vector<at::Tensor> mma = kernel_backward(in, probe, c.iterations);
    std::vector<at::Tensor> wmma;
    {
      const test::ScopedEnv wmma_kernel("PRIME_GKA_BACKWARD_WMMA", "1");
      wmma = kernel_backward(in, probe, c.iterations);
    }
    double worst = 0;
    for (size_t i = 0; i < mma.size(); ++i) {
      INFO("gradient of input " << i);
      CHECK(at::isfinite(mma[i]).all().item<bool>());
      const double error = norm_relative_error(mma[i], wmma[i]);
      CHECK(error <= 2e-5);
      worst = std::max(worst, error);
    }
    std::cout << "[kernels][gka] backward kernels B=" << c.B << " H=" << c.H << " n=" << c.n << " C=" << c.C
              << " D=" << c.D << " N=" << c.iterations << (c.broadcast ? " broadcast" : "")
              << ": mma vs wmma, worst gradient " << worst << std::endl;
  }
}

// Small enough for compute-sanitizer's memcheck and racecheck: one padded chunk (23 rows) and
// one full chunk, a few iterations, every output poisoned first; the sweep on 3xTF32 and on bf16x3.
TEST_CASE("GKA solve backward kernel: small chunks equal the torch-ops sweep", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  for (const int64_t C : {23, 16}) {
    const System system = random_system(1, 1, 2, C, 32, 9 + C);
    const at::Tensor probe = at::randn({1, 1, 2, C, 32}, at::kDouble);
    const auto in = leaves(system, at::Device(at::kCUDA, 0), at::kFloat);
    const std::vector<at::Tensor> direct = kernel_backward(in, probe, 3);
    const std::vector<at::Tensor> bf16x3 = kernel_backward(in, probe, 3, kernels::SolveProducts::Bf16x3);
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    const SolveRun torch_ops = run_solve(in, probe, 3, false);
    for (size_t i = 0; i < direct.size(); ++i) {
      INFO("C=" << C << ", gradient of input " << i);
      CHECK(norm_relative_error(direct[i], torch_ops.grads[i]) <= 1e-4);
      CHECK(norm_relative_error(bf16x3[i], torch_ops.grads[i]) <= 1e-4);
    }
  }
}

// The reverse sweep on bf16x3 products (PRIME_GKA_BACKWARD_PRODUCTS=bf16x3): every output written
// (poisoned), all six gradients within the fp32 bound of float64 (experiments/gka_bf16_solve: within
// 1.4e-5 in its study) and of the 3xTF32 sweep, over full and padded chunks, D = 32 to 128, N = 2
// and 30 (D = 32 at both), H_0 and the decays broadcast; ChunkSolve takes it under the variable (its gradients the
// kernel's bit for bit), and 3xTF32 under tf32x3 and unset (the two differ).
TEST_CASE("GKA solve backward kernel: bf16x3 products keep the fp32 bound", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  // Also the whole-hybrid test's GKA shape (head dim 32, N = 30, a last chunk of 22 steps of T = 150), where
  // its fp32 gradients came out ~50x further from float64 with bf16x3 the default (kernels/README.md, v9).
  for (const SweepCase& c : std::vector<SweepCase>{{1, 2, 2, 64, 128, 30, false},
                                         {2, 1, 2, 37, 64, 30, false},
                                         {1, 2, 3, 64, 32, 2, false},
                                         {1, 2, 2, 48, 96, 30, true},
                                         {2, 2, 2, 64, 32, 30, false},
                                         {2, 2, 1, 22, 32, 30, false}}) {
    INFO("B=" << c.B << " H=" << c.H << " n=" << c.n << " C=" << c.C << " D=" << c.D << " N=" << c.iterations
              << (c.broadcast ? " broadcast" : ""));
    const System system = random_system(c.B, c.H, c.n, c.C, c.D, 31 + c.C + c.D, c.broadcast);
    const at::Tensor probe = at::randn({c.B, c.H, c.n, c.C, c.D}, at::kDouble);
    const auto on_cuda = leaves(system, cuda, at::kFloat);
    const std::vector<at::Tensor> tf32x3 = kernel_backward(on_cuda, probe, c.iterations);
    const std::vector<at::Tensor> bf16x3 = kernel_backward(on_cuda, probe, c.iterations, kernels::SolveProducts::Bf16x3);
    SolveRun through_autograd, unset, tf32x3_asked;
    {
      const test::ScopedEnv products("PRIME_GKA_BACKWARD_PRODUCTS", "bf16x3");
      through_autograd = run_solve(leaves(system, cuda, at::kFloat), probe, c.iterations, false);
    }
    {
      const test::ScopedEnv products("PRIME_GKA_BACKWARD_PRODUCTS", nullptr);
      unset = run_solve(leaves(system, cuda, at::kFloat), probe, c.iterations, false);
    }
    {
      const test::ScopedEnv products("PRIME_GKA_BACKWARD_PRODUCTS", "tf32x3");
      tf32x3_asked = run_solve(leaves(system, cuda, at::kFloat), probe, c.iterations, false);
    }
    const SolveRun reference = run_solve(leaves(system, at::kCPU, at::kDouble), probe, c.iterations, true);
    double vs_f64 = 0, vs_tf32 = 0;
    for (size_t i = 0; i < bf16x3.size(); ++i) {
      INFO("gradient of input " << i);
      CHECK(at::isfinite(bf16x3[i]).all().item<bool>());
      CHECK(at::equal(through_autograd.grads[i], bf16x3[i]));
      CHECK(at::equal(unset.grads[i], tf32x3[i]));
      CHECK(at::equal(tf32x3_asked.grads[i], tf32x3[i]));
      const double error64 = norm_relative_error(bf16x3[i], reference.grads[i]);
      const double error32 = norm_relative_error(bf16x3[i], tf32x3[i]);
      CHECK(error64 <= 1e-4);
      CHECK(error32 <= 1e-4);
      vs_f64 = std::max(vs_f64, error64);
      vs_tf32 = std::max(vs_tf32, error32);
    }
    CHECK_FALSE(at::equal(bf16x3[1], tf32x3[1]));  // the keys' gradient: the bf16x3 steps ran
    std::cout << "[kernels][gka] backward bf16x3 B=" << c.B << " H=" << c.H << " n=" << c.n << " C=" << c.C
              << " D=" << c.D << " N=" << c.iterations << (c.broadcast ? " broadcast" : "")
              << ": worst gradient vs float64 " << vs_f64 << ", vs 3xTF32 " << vs_tf32 << std::endl;
  }
}

// The split sweep (PRIME_GKA_SWEEP=split): the adjoint recurrence kernel's dq, d e^G and d f are the
// sweep kernel's bit for bit (the same arithmetic); ChunkSolve's gradients of the keys, H_0 and the
// weights from the stacked adjoints (products on chunk_gemm) within the fp32 bound of the torch-ops
// sweep and of float64. Every adjoint written (outputs poisoned).
TEST_CASE("GKA adjoint recurrence kernel: the split sweep equals the sweep kernel and float64",
          "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  const at::Device cuda(at::kCUDA, 0);
  for (const SweepCase& c : std::vector<SweepCase>{{1, 2, 2, 64, 128, 30, false, true},
                                         {2, 1, 2, 64, 64, 2, false, false},
                                         {1, 2, 3, 64, 32, 1, false, false},
                                         {2, 2, 2, 37, 32, 30, false, true},
                                         {1, 3, 2, 23, 96, 30, false, false},
                                         {2, 2, 2, 64, 64, 30, true, false},
                                         {1, 2, 2, 37, 128, 30, true, true}}) {
    INFO("B=" << c.B << " H=" << c.H << " n=" << c.n << " C=" << c.C << " D=" << c.D << " N=" << c.iterations
              << (c.broadcast ? " broadcast" : ""));
    const System system = random_system(c.B, c.H, c.n, c.C, c.D, 31 + c.C + c.D + c.iterations, c.broadcast);
    const at::Tensor probe = at::randn({c.B, c.H, c.n, c.C, c.D}, at::kDouble);
    const auto in = leaves(system, cuda, at::kFloat);
    REQUIRE(kernels::gka_chunk_adjoint_apply(in[0], c.iterations));
    const std::vector<at::Tensor> sweep = kernel_backward(in, probe, c.iterations);
    kernels::GkaAdjoints adjoints;
    {
      const at::NoGradGuard no_grad;
      at::Tensor iterates, by_iteration;
      kernels::gka_chunk_solve(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, c.iterations, &iterates,
                               kernels::SolveProducts::Tf32x3, kernels::IterateLayout::ChunkMajor);
      kernels::gka_chunk_solve(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, c.iterations, &by_iteration);
      REQUIRE(iterates.sizes() == at::IntArrayRef({c.B, c.H, c.n, c.iterations, c.C, c.D}));
      CHECK(at::equal(iterates, by_iteration.movedim(0, -3)));  // the same iterates, chunk-major
      {
        const test::ScopedEnv wmma_kernel("PRIME_GKA_SOLVE_WMMA", "1");  // the wmma forward kernel's too
        at::Tensor wmma_chunk_major, wmma_by_iteration;
        kernels::gka_chunk_solve(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, c.iterations, &wmma_chunk_major,
                                 kernels::SolveProducts::Tf32x3, kernels::IterateLayout::ChunkMajor);
        kernels::gka_chunk_solve(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, c.iterations, &wmma_by_iteration);
        CHECK(at::equal(wmma_chunk_major, wmma_by_iteration.movedim(0, -3)));
      }
      adjoints = kernels::gka_chunk_adjoint_recurrence(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, c.iterations,
                                                       iterates, probe.to(in[0].options()));
    }
    REQUIRE(adjoints.adjoints.sizes() == at::IntArrayRef({c.B, c.H, c.n, c.iterations, c.C, c.D}));
    CHECK(at::isfinite(adjoints.adjoints).all().item<bool>());
    CHECK(at::equal(adjoints.q, sweep[0]));
    CHECK(at::equal(at::sum_to(adjoints.from_start, in[4].sizes()), sweep[4]));
    CHECK(at::equal(adjoints.frob, sweep[5]));
    // U_N = -omega_N eta A_{N+1}, A_{N+1} the upstream gradient.
    {
      const at::Tensor frob = in[5].detach().expand({c.B, c.H, c.n, c.C, 1});
      const at::Tensor eta = 2.0 / (2.0 * (frob * 0.02) + frob);
      double omega = 2.0;
      const double spread = 1.0 / (2.0 * (2.0 * 0.02 + 1.0));
      for (int i = 0; i < c.iterations; ++i) omega = 1.0 / (1.0 - spread * spread * omega);
      const at::Tensor expected = probe.to(in[0].options()) * (eta * -omega);
      CHECK(norm_relative_error(adjoints.adjoints.select(3, c.iterations - 1), expected) <= 1e-6);
    }
    SolveRun split;
    {
      const test::ScopedEnv form("PRIME_GKA_SWEEP", "split");
      split = run_solve(in, probe, c.iterations, false);
    }
    SolveRun torch_ops;
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      torch_ops = run_solve(leaves(system, cuda, at::kFloat), probe, c.iterations, false);
    }
    const SolveRun reference =
        c.float64 ? run_solve(leaves(system, at::kCPU, at::kDouble), probe, c.iterations, true) : SolveRun{};
    for (const size_t i : {0, 4, 5}) CHECK(at::equal(split.grads[i], sweep[i]));
    double vs_torch = 0, vs_f64 = 0, vs_sweep = 0;
    for (size_t i = 0; i < split.grads.size(); ++i) {
      INFO("gradient of input " << i);
      CHECK(at::isfinite(split.grads[i]).all().item<bool>());
      const double error = norm_relative_error(split.grads[i], torch_ops.grads[i]);
      CHECK(error <= 1e-4);
      vs_torch = std::max(vs_torch, error);
      vs_sweep = std::max(vs_sweep, norm_relative_error(split.grads[i], sweep[i]));
      if (c.float64) {
        const double error64 = norm_relative_error(split.grads[i], reference.grads[i]);
        CHECK(error64 <= 1e-4);
        vs_f64 = std::max(vs_f64, error64);
      }
    }
    std::cout << "[kernels][gka] split sweep B=" << c.B << " H=" << c.H << " n=" << c.n << " C=" << c.C
              << " D=" << c.D << " N=" << c.iterations << (c.broadcast ? " (H_0, decays broadcast)" : "")
              << ": worst gradient vs torch ops " << vs_torch << ", vs the sweep kernel " << vs_sweep;
    if (c.float64) std::cout << ", vs float64 " << vs_f64;
    std::cout << std::endl;
  }
}

// Small enough for compute-sanitizer: one padded chunk (23 rows) and one full chunk, a few iterations.
TEST_CASE("GKA adjoint recurrence kernel: small chunks equal the sweep kernel", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  for (const int64_t C : {23, 16}) {
    const System system = random_system(1, 1, 2, C, 32, 19 + C);
    const at::Tensor probe = at::randn({1, 1, 2, C, 32}, at::kDouble);
    const auto in = leaves(system, at::Device(at::kCUDA, 0), at::kFloat);
    REQUIRE(kernels::gka_chunk_adjoint_apply(in[0], 3));
    const std::vector<at::Tensor> sweep = kernel_backward(in, probe, 3);
    const test::ScopedEnv form("PRIME_GKA_SWEEP", "split");
    const SolveRun split = run_solve(in, probe, 3, false);
    for (size_t i = 0; i < sweep.size(); ++i) {
      INFO("C=" << C << ", gradient of input " << i);
      if (i == 0 || i == 4 || i == 5)
        CHECK(at::equal(split.grads[i], sweep[i]));  // the recurrence kernel's, bit for bit
      else
        CHECK(norm_relative_error(split.grads[i], sweep[i]) <= 1e-4);
    }
  }
  // A head dim the recurrence kernel does not serve (D = 16): the split form falls back to the in-loop
  // sweep kernel, whose gradients it then returns bit for bit.
  const System system = random_system(1, 1, 2, 23, 16, 41);
  const at::Tensor probe = at::randn({1, 1, 2, 23, 16}, at::kDouble);
  const auto in = leaves(system, at::Device(at::kCUDA, 0), at::kFloat);
  REQUIRE_FALSE(kernels::gka_chunk_adjoint_apply(in[0], 3));
  REQUIRE(kernels::gka_chunk_solve_backward_apply(in[0], 3));
  const std::vector<at::Tensor> sweep = kernel_backward(in, probe, 3);
  const test::ScopedEnv form("PRIME_GKA_SWEEP", "split");
  const SolveRun split = run_solve(in, probe, 3, false);
  for (size_t i = 0; i < sweep.size(); ++i) CHECK(at::equal(split.grads[i], sweep[i]));
}

TEST_CASE("GKA adjoint recurrence kernel: never applies to CPU tensors or head dims it does not serve",
          "[kernels][gka]") {
  const at::Tensor q = at::randn({1, 2, 64, 64});
  CHECK_FALSE(kernels::gka_chunk_adjoint_apply(q, 30));
  if (!torch::cuda::is_available()) return;
  CHECK_FALSE(kernels::gka_chunk_adjoint_apply(at::randn({1, 2, 64, 48}, at::Device(at::kCUDA, 0)), 30));
  CHECK_FALSE(kernels::gka_chunk_adjoint_apply(at::randn({1, 2, 64, 64}, at::Device(at::kCUDA, 0)), 0));
}
