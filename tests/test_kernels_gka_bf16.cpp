// kernels/gka_solve on the bf16 tensor cores: the forward kernel with bf16x3 products (fp32
// accuracy: the 1e-4 bound) and in the bf16 form (keys and H_0 rounded to bf16, X split for X K^T:
// within max(1e-2, 4 x the solve's sensitivity to bf16 q and keys) of float64; the layer's
// output is checked in test_kernels_gka_forward_bf16.cpp), and how model::ChunkSolve
// takes them: PRIME_GKA_SOLVE_PRODUCTS for the fp32 solve's forward, PRIME_SSM_CORE=bf16 for the bf16
// form; the backward stays the fp32 solve's (3xTF32 iterates). Outputs are poisoned with NaN first.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <iostream>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/gka_solve/gka_solve.h"
#include "model/gka_core.h"
#include "test_helpers.h"
#include "test_kernels_gka_util.h"
#include "test_kernels_util.h"
#include "util/error.h"

using namespace prime;
using kernels::SolveProducts;
using test::leaves;
using test::norm_relative_error;
using test::random_system;
using test::System;

namespace {

using Shape = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;  // B, H, n, C, D

// Full and padded chunks (23, 37, 48 rows), every served head dim.
const std::vector<Shape> kShapes{{2, 2, 3, 64, 128}, {1, 2, 2, 23, 128}, {1, 3, 2, 37, 96}, {2, 1, 2, 48, 32},
                                 {1, 1, 3, 64, 64}};

at::Tensor solve(const std::vector<at::Tensor>& in, int iterations, SolveProducts products,
                 at::Tensor* iterates = nullptr) {
  return kernels::gka_chunk_solve(in[0], in[1], in[2], in[3], in[4], in[5], 0.02, iterations, iterates, products);
}

// The unrolled iteration in float64 on the CPU, q and keys rounded to bf16 first where asked.
at::Tensor float64_solve(const System& system, int iterations, bool bf16_inputs = false) {
  std::vector<at::Tensor> in = leaves(system, at::kCPU, at::kDouble);
  if (bf16_inputs)
    for (const int i : {0, 1}) in[i] = in[i].detach().to(at::kBFloat16).to(at::kDouble);
  const model::gka_detail::ChunkSystem s{in[1], in[2], in[3], in[4]};
  const at::NoGradGuard no_grad;
  return model::gka_detail::chunk_solve_unrolled(in[0], s, in[5], 0.02, iterations);
}

}  // namespace

TEST_CASE("GKA solve products: PRIME_GKA_SOLVE_PRODUCTS and PRIME_GKA_BACKWARD_PRODUCTS take tf32x3 or bf16x3",
          "[kernels][gka]") {
  // Unset: tf32x3 for the forward and for the reverse sweep.
  for (const auto& [variable, read, unset_value] :
       {std::tuple{"PRIME_GKA_SOLVE_PRODUCTS", &kernels::gka_fp32_solve_products, SolveProducts::Tf32x3},
        std::tuple{"PRIME_GKA_BACKWARD_PRODUCTS", &kernels::gka_backward_products, SolveProducts::Tf32x3}}) {
    INFO(variable);
    {
      const test::ScopedEnv unset(variable, nullptr);
      CHECK(read() == unset_value);
    }
    {
      const test::ScopedEnv tf32(variable, "tf32x3");
      CHECK(read() == SolveProducts::Tf32x3);
    }
    {
      const test::ScopedEnv bf16x3(variable, "bf16x3");
      CHECK(read() == SolveProducts::Bf16x3);
    }
    for (const char* bad : {"bf16", "fp32", "BF16X3", "1"}) {
      const test::ScopedEnv wrong(variable, bad);
      CHECK_THROWS_WITH(read(), Catch::Contains(variable));
    }
  }
}

TEST_CASE("GKA solve kernel: bf16x3 products keep fp32 accuracy, solution, iterates and gradients",
          "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const int iterations = 30;
  for (const auto& [B, H, n, C, D] : kShapes) {
    INFO("B=" << B << " H=" << H << " n=" << n << " C=" << C << " D=" << D);
    const System system = random_system(B, H, n, C, D, 23 + C + D);
    const auto in = leaves(system, at::Device(at::kCUDA, 0), at::kFloat);
    at::Tensor split_iterates, tf32_iterates, split, tf32;
    {
      const at::NoGradGuard no_grad;
      split = solve(in, iterations, SolveProducts::Bf16x3, &split_iterates);
      tf32 = solve(in, iterations, SolveProducts::Tf32x3, &tf32_iterates);
    }
    const at::Tensor reference = float64_solve(system, iterations);
    const double error = norm_relative_error(split, reference), tf32_error = norm_relative_error(tf32, reference);
    const double iterates_apart = norm_relative_error(split_iterates, tf32_iterates);
    std::cout << "[kernels][gka] bf16x3 B=" << B << " H=" << H << " n=" << n << " C=" << C << " D=" << D
              << ": x vs float64 " << error << " (3xTF32 " << tf32_error << "), iterates vs 3xTF32 " << iterates_apart
              << std::endl;
    CHECK(at::isfinite(split).all().item<bool>());
    CHECK(at::isfinite(split_iterates).all().item<bool>());
    CHECK(error <= 1e-4);
    CHECK(iterates_apart <= 1e-4);
    CHECK(norm_relative_error(split_iterates[0], tf32_iterates[0]) == 0.0);  // eta q, no product yet

    // Through model::ChunkSolve with the fp32 solve's forward on bf16x3: its backward recomputes the
    // iterates on 3xTF32 (the default's gradients, bit for bit), every gradient within the fp32 bound.
    const at::Tensor probe = at::randn(system.q.sizes(), at::TensorOptions().dtype(at::kDouble));
    const test::SolveRun by_default = test::run_solve(in, probe, iterations, false);
    const test::ScopedEnv bf16x3("PRIME_GKA_SOLVE_PRODUCTS", "bf16x3");
    const test::SolveRun ours = test::run_solve(in, probe, iterations, false);
    const test::SolveRun want = test::run_solve(leaves(system, at::kCPU, at::kDouble), probe, iterations, true);
    CHECK(norm_relative_error(ours.x, split) == 0.0);  // ChunkSolve's forward took the bf16x3 kernel
    for (size_t i = 0; i < want.grads.size(); ++i) {
      INFO("gradient " << i);
      const double grad_error = norm_relative_error(ours.grads[i], want.grads[i]);
      std::cout << "[kernels][gka] bf16x3 forward, gradient " << i << " vs float64 " << grad_error << std::endl;
      CHECK(at::equal(ours.grads[i], by_default.grads[i]));
      CHECK(grad_error <= 1e-4);
    }
  }
}

TEST_CASE("GKA solve kernel: the bf16 form stays within the bf16 bound, PRIME_SSM_CORE=bf16 takes bf16x3 in ChunkSolve",
          "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const int iterations = 30;
  for (const auto& [B, H, n, C, D] : kShapes) {
    INFO("B=" << B << " H=" << H << " n=" << n << " C=" << C << " D=" << D);
    const System system = random_system(B, H, n, C, D, 29 + C + D);
    const auto in = leaves(system, at::Device(at::kCUDA, 0), at::kFloat);
    at::Tensor x, iterates;
    {
      const at::NoGradGuard no_grad;
      x = solve(in, iterations, SolveProducts::Bf16, &iterates);
    }
    const at::Tensor reference = float64_solve(system, iterations);
    const double error = norm_relative_error(x, reference);
    const double sensitivity = norm_relative_error(float64_solve(system, iterations, true), reference);
    std::cout << "[kernels][gka] bf16 B=" << B << " H=" << H << " n=" << n << " C=" << C << " D=" << D
              << ": x vs float64 " << error << " (sensitivity to bf16 q, keys " << sensitivity << ")" << std::endl;
    CHECK(at::isfinite(x).all().item<bool>());
    CHECK(at::isfinite(iterates).all().item<bool>());
    CHECK(error <= std::max(1e-2, 4 * sensitivity));

    // ChunkSolve under PRIME_SSM_CORE=bf16: the forward on bf16x3 (its keys are fp32), the
    // gradients the fp32 solve's, bit for bit (the backward recomputes the iterates as before).
    const at::Tensor probe = at::randn(system.q.sizes(), at::TensorOptions().dtype(at::kDouble));
    test::SolveRun fp32;
    {
      const test::ScopedEnv fp32_core("PRIME_SSM_CORE", nullptr);
      fp32 = test::run_solve(in, probe, iterations, false);
    }
    const test::ScopedEnv bf16("PRIME_SSM_CORE", "bf16");
    const test::SolveRun ours = test::run_solve(in, probe, iterations, false);
    {
      const at::NoGradGuard no_grad;
      CHECK(at::equal(ours.x, solve(in, iterations, SolveProducts::Bf16x3)));
    }
    for (size_t i = 0; i < fp32.grads.size(); ++i) {
      INFO("gradient " << i);
      CHECK(at::equal(ours.grads[i], fp32.grads[i]));
    }
  }
}

TEST_CASE("GKA solve kernel: bf16 products fall back to 3xTF32 where D is not a multiple of 32",
          "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::NoGradGuard no_grad;
  for (const int64_t D : {16, 48, 80}) {
    INFO("D=" << D);
    const auto in = leaves(random_system(1, 2, 2, 40, D, 31 + D), at::Device(at::kCUDA, 0), at::kFloat);
    const at::Tensor tf32 = solve(in, 10, SolveProducts::Tf32x3);
    CHECK(at::equal(solve(in, 10, SolveProducts::Bf16x3), tf32));
    CHECK(at::equal(solve(in, 10, SolveProducts::Bf16), tf32));
  }
}

// Small enough for compute-sanitizer's memcheck and racecheck (experiments/kernels/run_gpu.sh, by
// the "one small chunk" prefix): one padded chunk, a few iterations, with the iterates.
TEST_CASE("GKA solve kernel: one small chunk on bf16 products equals the torch-ops iteration", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;  // the torch-ops references run without TF32
  const at::NoGradGuard no_grad;
  const System system = random_system(1, 1, 2, 23, 32, 5);
  const auto in = leaves(system, at::Device(at::kCUDA, 0), at::kFloat);
  const int iterations = 3;
  for (const auto& [products, bound] : std::vector<std::pair<SolveProducts, double>>{{SolveProducts::Bf16x3, 1e-4},
                                                                                      {SolveProducts::Bf16, 1e-2}}) {
    INFO((products == SolveProducts::Bf16x3 ? "bf16x3" : "the bf16 form"));
    at::Tensor iterates;
    const at::Tensor x = solve(in, iterations, products, &iterates);
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    const model::gka_detail::ChunkSystem s{in[1], in[2], in[3], in[4]};
    CHECK(norm_relative_error(x, model::gka_detail::chunk_solve_unrolled(in[0], s, in[5], 0.02, iterations)) <= bound);
    CHECK(norm_relative_error(iterates[2], model::gka_detail::chunk_solve_unrolled(in[0], s, in[5], 0.02, 2)) <=
          bound);
  }
}
