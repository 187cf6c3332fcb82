// kernels/kv_cache_step: the fused write of a static KV cache's decode step, reached through
// model::KvCache::write_step, against the torch form of write_step: two caches filled by the same
// prefill and fed the same tokens, one per form, must hold the same keys and values and return
// the same visibility mask after every step (copies and integer comparisons: bit for bit), for
// full attention and windows with and without sinks, over enough steps to wrap the ring; the mask
// poisoned first.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <string>
#include <tuple>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/kv_cache_step/kv_cache_step.h"
#include "model/kv_cache.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

using namespace prime;

TEST_CASE("kv cache step kernel: never applies to CPU tensors", "[kernels][kv_cache]") {
  const at::Tensor cache = at::zeros({1, 2, 8, 4}), token = at::zeros({1, 2, 1, 4});
  const at::Tensor slots = at::full({8}, -1, at::kLong), position = at::zeros({1}, at::kLong);
  CHECK_FALSE(kernels::kv_cache_step_apply(cache, cache, token, token, slots, position));
}

TEST_CASE("kv cache step kernel: equals the torch form of the static cache's step", "[kernels][gpu][kv_cache]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(5);
  const int64_t B = 2, H = 3, D = 16, prefill = 9, steps = 40;
  // (window, sinks, max tokens): full attention; a window with sinks (a ring after the sinks); a
  // window without sinks.
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> geometries = {{0, 0, prefill + steps + 1},
                                                                         {6, 2, 200}, {5, 0, 200}};
  for (const at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    for (const auto& [window, sinks, max_tokens] : geometries) {
      const auto options = at::TensorOptions().device(at::kCUDA).dtype(type);
      const auto long_options = at::TensorOptions().device(at::kCUDA).dtype(at::kLong);
      const at::Tensor k0 = at::randn({B, H, prefill, D}, options), v0 = at::randn({B, H, prefill, D}, options);
      model::KvCache ours(H, D, window, sinks), torch(H, D, window, sinks);
      ours.append(k0, v0);
      torch.append(k0, v0);
      const at::Tensor our_position = at::full({1}, prefill, long_options);
      const at::Tensor torch_position = at::full({1}, prefill, long_options);
      ours.make_static(max_tokens, our_position);
      torch.make_static(max_tokens, torch_position);
      for (int64_t step = 0; step < steps; ++step) {
        INFO(c10::toString(type) << " window " << window << " sinks " << sinks << " step " << step);
        // The model hands write_step transposed views of [B, 1, H, D].
        const at::Tensor k = at::randn({B, 1, H, D}, options).transpose(1, 2);
        const at::Tensor v = at::randn({B, 1, H, D}, options).transpose(1, 2);
        REQUIRE(kernels::kv_cache_step_apply(ours.keys(), ours.values(), k, v, at::full({ours.keys().size(2)}, -1, long_options),
                                             our_position));
        const model::KvCache::StepView got = ours.write_step(k, v);
        model::KvCache::StepView want;
        {
          const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
          want = torch.write_step(k, v);
        }
        REQUIRE(got.visible.sizes() == want.visible.sizes());
        CHECK(at::equal(got.visible, want.visible));
        CHECK(at::equal(got.keys, want.keys));
        CHECK(at::equal(got.values, want.values));
        our_position.add_(1);
        torch_position.add_(1);
      }
    }
  }
}
