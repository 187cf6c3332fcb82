// Programmatic dependent launch (kernels/common/pdl.cuh): PRIME_PDL's values; on the GPU, a kernel
// launched with it starts before the kernel it depends on has ended and still reads everything
// that kernel wrote; and a hybrid of every layer type decodes (eager static steps and CUDA-graph
// replays) to the same bits with and without it.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include "kernels/common/pdl_check.h"
#include "kernels/common/policy.h"
#include "model/hybrid_model.h"
#include "model/step_decoder.h"
#include "test_helpers.h"
#include "test_hybrid_util.h"
#include "util/error.h"

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

using namespace prime;

TEST_CASE("PRIME_PDL: on unless 0 and anything else a clear error", "[kernels][pdl]") {
  {
    const test::ScopedEnv unset("PRIME_PDL", nullptr);
    CHECK(kernels::dependent_launch());
  }
  {
    const test::ScopedEnv on("PRIME_PDL", "1");
    CHECK(kernels::dependent_launch());
  }
  {
    const test::ScopedEnv off("PRIME_PDL", "0");
    CHECK_FALSE(kernels::dependent_launch());
  }
  const test::ScopedEnv bad("PRIME_PDL", "yes");
  CHECK_THROWS_AS(kernels::dependent_launch(), UserError);
  CHECK_THROWS_WITH(kernels::dependent_launch(), Catch::Matchers::Contains("PRIME_PDL=yes"));
}

TEST_CASE("PDL: the dependent kernel starts before the one it waits on ends and reads all it wrote",
          "[kernels][gpu][pdl]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
#ifdef PRIME_WITH_CUDA
  const bool hopper = at::cuda::getCurrentDeviceProperties()->major >= 9;
  // The first launch of each kernel loads its code (lazy module loading): no overlap to see yet.
  CHECK(kernels::probe_dependent_launch().waited);
  for (int round = 0; round < 3; ++round) {
    {
      const test::ScopedEnv on("PRIME_PDL", "1");
      const kernels::DependentLaunchProbe probe = kernels::probe_dependent_launch();
      CHECK(probe.waited);
      CHECK(probe.overlapped == hopper);  // 50 us of hold: the consumer is resident long before it ends
    }
    const test::ScopedEnv off("PRIME_PDL", "0");
    const kernels::DependentLaunchProbe probe = kernels::probe_dependent_launch();
    CHECK(probe.waited);
    CHECK_FALSE(probe.overlapped);
  }
#endif
}

namespace {

// Logits of a 9-token prefill and then one StepDecoder step per remaining token, [B, T, vocab].
at::Tensor decode_logits(model::HybridModel& model, const at::Tensor& ids, bool graph) {
  auto cache = model.make_cache(ids.size(0), ids.size(1));
  constexpr int64_t kPrefix = 9;
  std::vector<at::Tensor> parts{model.forward(ids.narrow(1, 0, kPrefix), &cache).cpu()};
  model::StepDecoder decoder(model, cache, ids.size(1), graph);
  for (int64_t t = kPrefix; t < ids.size(1); ++t) parts.push_back(decoder.step(ids.select(1, t)).unsqueeze(1).cpu());
  return at::cat(parts, 1);
}

}  // namespace

TEST_CASE("PDL: every layer type decodes to the same bits with and without it in eager and graphed steps",
          "[kernels][gpu][pdl][static]") {
  if (!test::gpu_available_or_fail()) return;
  at::NoGradGuard no_grad;
  const at::Device cuda(at::kCUDA, 0);
  auto built = test::build_hybrid({"GDN", "*", "M2", "SWA", "GKA", "*"}, nlohmann::json{{"window_size", 6}});
  const at::Tensor ids = at::randint(0, 97, {2, 24}, at::kLong);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    INFO(c10::toString(dtype));
    model::HybridModel model(built.config, model::prepare_weights(built.weights, {cuda, dtype}));
    for (bool graph : {false, true}) {
      INFO((graph ? "graphed" : "eager"));
      at::Tensor plain, dependent;
      {
        const test::ScopedEnv off("PRIME_PDL", "0");
        plain = decode_logits(model, ids, graph);
      }
      {
        const test::ScopedEnv on("PRIME_PDL", "1");
        dependent = decode_logits(model, ids, graph);
      }
      REQUIRE(at::isfinite(plain).all().item<bool>());
      CHECK(at::equal(plain, dependent));
    }
  }
}
