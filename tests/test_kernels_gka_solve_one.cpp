// kernels/gka_solve's one-warpgroup solve (gka_solve_one.h): x of the bf16 form against float64 on the same bf16
// operands (q, the keys and H_0 rounded to bf16, the decays and norms fp32), random chunk systems at head dim
// 128, outputs poisoned with NaN first.
#include <catch2/catch.hpp>

#include <iostream>

#include "kernels/common/policy.h"
#include "kernels/gka_solve/gka_forward_bf16.h"
#include "kernels/gka_solve/gka_solve_one.h"
#include "model/gka_core.h"
#include "test_helpers.h"
#include "test_kernels_gka_util.h"
#include "test_kernels_util.h"

using namespace prime;

TEST_CASE("GKA one-group solve: refuses operands it does not take", "[kernels][gka]") {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
  const at::Tensor q = at::zeros({1, 64, 128}, bf16), h0 = at::zeros({1, 128, 128}, bf16);
  const at::Tensor w = at::zeros({1, 64, 64}), rows = at::ones({1, 64});
  // CPU tensors: a CUDA build refuses them by name, a build without CUDA refuses the call.
  CHECK_THROWS_WITH(kernels::gka_solve_one_group(q, q, h0, w, rows, rows, 0.02, 30),
                    Catch::Matchers::Contains("gka_solve_one_group") &&
                        (Catch::Matchers::Contains("must be a CUDA tensor") ||
                         Catch::Matchers::Contains("no CUDA kernels")));
}

TEST_CASE("GKA one-group solve: x within the bf16 form's bound of float64", "[kernels][gka][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA, 0);
  if (!kernels::gka_forward_wgmma_available(cuda)) return;  // not a Hopper: the form does not run there
  const test::PoisonOutputs poison;
  // (seed, iterations): the layer's 30, an odd count, one iteration (the products' rounding alone).
  for (const auto& [seed, iterations] : {std::pair{3, 30}, std::pair{5, 7}, std::pair{9, 1}}) {
    INFO("seed " << seed << ", " << iterations << " iterations");
    const test::System s = test::random_system(1, 3, 2, 64, 128, seed);  // 6 chunks
    const at::Tensor q = s.q.to(at::kBFloat16), keys = s.keys.to(at::kBFloat16), h0 = s.start.to(at::kBFloat16);
    model::gka_detail::ChunkSystem system;
    system.keys = keys.to(at::kDouble);
    system.start = h0.to(at::kDouble);
    system.weights = s.weights;
    system.from_start = s.from_start;
    const at::Tensor want =
        model::gka_detail::chunk_solve_unrolled(q.to(at::kDouble), system, s.frob, 0.02, iterations);
    const auto f32 = at::TensorOptions().device(cuda).dtype(at::kFloat);
    const at::Tensor got = kernels::gka_solve_one_group(
        q.reshape({6, 64, 128}).to(cuda), keys.reshape({6, 64, 128}).to(cuda), h0.reshape({6, 128, 128}).to(cuda),
        s.weights.reshape({6, 64, 64}).to(f32), s.from_start.reshape({6, 64}).to(f32), s.frob.reshape({6, 64}).to(f32),
        0.02, iterations);
    REQUIRE(got.sizes() == at::IntArrayRef({6, 64, 128}));
    CHECK(at::isfinite(got).all().item<bool>());  // every element written
    const double error = test::norm_relative_error(got.cpu().to(at::kDouble).reshape(want.sizes()), want);
    std::cout << "[kernels][gka] one-group solve, " << iterations << " iterations: x vs float64 " << error
              << std::endl;
    // The form emulated on the CPU with the kernel's roundings (experiments/gka_bf16_solve/one_group_emulation.py,
    // these systems): 3.4-3.6e-4 at 30 iterations, 2.1-2.3e-4 at 7, 1.3-1.4e-4 at 1; the kernel adds in its own
    // order, and a bf16 rounding flipped by it moves one element by a bf16 ulp. About 5x the emulation's.
    CHECK(error <= (iterations == 1 ? 7e-4 : 2e-3));
  }
}
