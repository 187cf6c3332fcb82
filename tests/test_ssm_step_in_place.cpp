// Decode steps write the SSM state in place (gated_delta_rule_step_in_place, ssd_step_in_place):
// the same values as the out-of-place steps, the cache's own tensor kept, and a hybrid's decoded
// logits equal to its full forward's.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <string>
#include <vector>

#include "eval/decode_bench.h"
#include "model/gdn.h"
#include "model/mamba2.h"

using namespace prime;

namespace {

double rel_error(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).norm().item<double>() / want.norm().item<double>();
}

at::Tensor unit_rows(at::IntArrayRef sizes) {
  const at::Tensor x = at::randn(sizes);
  return x / x.norm(2, -1, true);
}

// The state tensor a layer cache holds (GDN or Mamba-2), undefined for attention.
at::Tensor ssm_state(model::LayerCache& cache) {
  if (auto* gdn = dynamic_cast<model::GdnCache*>(&cache)) return gdn->state;
  if (auto* m2 = dynamic_cast<model::Mamba2Cache*>(&cache)) return m2->state;
  return at::Tensor();
}

}  // namespace

TEST_CASE("in-place SSM steps give the out-of-place steps' output and state", "[ssm][decode]") {
  at::NoGradGuard no_grad;
  at::manual_seed(41);
  const int64_t B = 3, H = 4, D = 16, N = 8;
  {
    const at::Tensor q = unit_rows({B, H, D}) * 0.25, k = unit_rows({B, H, D}), v = at::randn({B, H, D});
    const at::Tensor g = -at::rand({B, H}) * 0.5, beta = at::rand({B, H});
    const at::Tensor state = at::randn({B, H, D, D});
    auto [o_want, state_want] = model::gated_delta_rule_step(q, k, v, g, beta, state);
    at::Tensor in_place = state.clone();
    const void* address = in_place.data_ptr();
    const at::Tensor o = model::gated_delta_rule_step_in_place(q, k, v, g, beta, in_place);
    CHECK(in_place.data_ptr() == address);
    CHECK(rel_error(o, o_want) <= 1e-6);
    CHECK(rel_error(in_place, state_want) <= 1e-6);
  }
  {
    const at::Tensor x = at::randn({B, H, D}), delta = at::rand({B, H}), A = -at::rand({H}) - 0.1;
    const at::Tensor Bm = at::randn({B, H, N}), Cm = at::randn({B, H, N});
    const at::Tensor state = at::randn({B, H, D, N});
    auto [y_want, state_want] = model::ssd_step(x, delta, A, Bm, Cm, state);
    at::Tensor in_place = state.clone();
    const void* address = in_place.data_ptr();
    const at::Tensor y = model::ssd_step_in_place(x, delta, A, Bm, Cm, in_place);
    CHECK(in_place.data_ptr() == address);
    CHECK(rel_error(y, y_want) <= 1e-6);
    CHECK(rel_error(in_place, state_want) <= 1e-6);
  }
}

TEST_CASE("decoding GDN and Mamba-2 hybrids keeps each cache's state tensor and the full forward's logits",
          "[ssm][decode]") {
  const std::string teacher =
      "synthetic:qwen3-0.6b@layers=2,hidden=32,heads=2,kv_heads=1,head_dim=16,intermediate=64,vocab=64,seed=7";
  for (const char* type : {"GDN", "M2"}) {
    INFO(type);
    eval::BenchModel bench = eval::load_bench_model(teacher + "+convert:" + type + ":1:1", {});
    model::HybridModel& model = *bench.model;
    const at::Tensor ids = at::randint(64, {2, 12}, at::kLong);
    at::NoGradGuard no_grad;
    const at::Tensor full = model.forward(ids);
    model::ModelCache cache = model.make_cache(2, 12);
    std::vector<at::Tensor> logits{model.forward(ids.narrow(1, 0, 8), &cache)};
    std::vector<const void*> addresses;
    for (auto& layer : cache.layers)
      if (const at::Tensor state = ssm_state(*layer); state.defined()) addresses.push_back(state.data_ptr());
    REQUIRE(addresses.size() == 1);
    for (int64_t t = 8; t < 12; ++t) logits.push_back(model.forward(ids.narrow(1, t, 1), &cache));
    std::vector<const void*> after;
    for (auto& layer : cache.layers)
      if (const at::Tensor state = ssm_state(*layer); state.defined()) after.push_back(state.data_ptr());
    CHECK(after == addresses);
    CHECK(cache.length() == 12);
    CHECK(rel_error(at::cat(logits, 1), full) <= 1e-5);
  }
}
