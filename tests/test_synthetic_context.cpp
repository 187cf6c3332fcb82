// A synthetic decode context (eval/synthetic_context.h) leaves the cache a decode step reads in
// the state a real prefill leaves it: same length, same KV slots and positions (an SWA window's
// eviction included), same bytes; decode steps then run from it in every mode.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <string>

#include "eval/decode_bench.h"
#include "eval/synthetic_context.h"
#include "model/kv_cache.h"
#include "model/step_decoder.h"
#include "util/error.h"

using namespace prime;

namespace {

const char* kTeacher =
    "synthetic:qwen3-0.6b@layers=2,hidden=32,heads=2,kv_heads=1,head_dim=16,intermediate=64,vocab=64,seed=5";

}  // namespace

TEST_CASE("synthetic context: a real prefill's length, KV slots, positions and bytes, for every layer type",
          "[bench][decode]") {
  at::NoGradGuard no_grad;
  const int64_t batch = 2;
  // SWA's window is 2048 by default: a context past it (and its eviction batch) checks the ring.
  for (const auto& [type, prompt] : std::vector<std::pair<std::string, int64_t>>{
           {"GDN", 70}, {"GKA", 70}, {"M2", 70}, {"SWA", 2200}}) {
    INFO(type << ", P = " << prompt);
    eval::BenchModel bench = eval::load_bench_model(std::string(kTeacher) + "+convert:" + type + ":1:1", {});
    model::HybridModel& model = *bench.model;
    const at::Tensor ids = at::randint(model.config().vocab_size, {batch, prompt}, at::kLong);
    model::ModelCache real = model.make_cache(batch, prompt + 8);
    model.forward(ids, &real);
    model::ModelCache synthetic = model.make_cache(batch, prompt + 8);
    eval::fill_synthetic_context(model, synthetic, prompt);
    REQUIRE(synthetic.length() == prompt);
    REQUIRE(synthetic.layers.size() == real.layers.size());
    for (size_t layer = 0; layer < real.layers.size(); ++layer) {
      INFO("layer " << layer);
      CHECK(synthetic.layers[layer]->length() == real.layers[layer]->length());
      CHECK(synthetic.layers[layer]->bytes_per_sequence() == real.layers[layer]->bytes_per_sequence());
      if (auto* kv = dynamic_cast<model::KvCache*>(real.layers[layer].get())) {
        auto* fake = dynamic_cast<model::KvCache*>(synthetic.layers[layer].get());
        REQUIRE(fake != nullptr);
        CHECK(fake->keys().sizes() == kv->keys().sizes());
        CHECK(at::equal(fake->positions(), kv->positions()));
        CHECK(fake->keys().scalar_type() == kv->keys().scalar_type());
      }
    }
    if (type == "SWA") CHECK(synthetic.bytes_per_sequence() < 2 * real.layers.size() * 16 * 4 * prompt);
    // Decode steps run from it, eagerly and through the static cache, and give finite logits.
    at::Tensor next = ids.select(1, prompt - 1);
    at::Tensor logits = model.forward(next.unsqueeze(1), &synthetic).select(1, 0);
    CHECK(at::isfinite(logits).all().item<bool>());
    model::StepDecoder decoder(model, synthetic, prompt + 8, /*use_graph=*/false);
    for (int step = 0; step < 3; ++step) logits = decoder.step(logits.argmax(-1));
    CHECK(at::isfinite(logits).all().item<bool>());
    CHECK(synthetic.length() == prompt + 4);
  }
}

TEST_CASE("synthetic context: refuses a used cache and an empty context, and the decode bench takes it",
          "[bench][decode]") {
  eval::BenchModel bench = eval::load_bench_model(std::string(kTeacher) + "+convert:GDN:1:1", {});
  model::ModelCache cache = bench.model->make_cache(1, 16);
  CHECK_THROWS_AS(eval::fill_synthetic_context(*bench.model, cache, 0), UserError);
  eval::fill_synthetic_context(*bench.model, cache, 5);
  CHECK_THROWS_WITH(eval::fill_synthetic_context(*bench.model, cache, 5), Catch::Contains("fresh cache"));

  eval::DecodeBenchOptions options;
  options.prompts = {40};
  options.new_tokens = 2;
  options.context = "synthetic";
  const auto rows = eval::run_decode_bench(bench, options);
  REQUIRE(rows.size() == 2);
  for (const auto& row : rows) {
    CHECK(row.error.empty());
    CHECK(row.context == "synthetic");
    CHECK(row.decode_tokens_per_s > 0);
    CHECK(row.prefill_tokens_per_s == 0);  // nothing was prefilled
  }
  // The same point after a real prefill holds the same cache.
  options.context = "prefill";
  const auto prefilled = eval::run_decode_bench(bench, options);
  CHECK(prefilled[0].kv_bytes_per_sequence == rows[0].kv_bytes_per_sequence);
  CHECK(prefilled[0].state_bytes_per_sequence == rows[0].state_bytes_per_sequence);
  options.context = "cached";
  CHECK_THROWS_AS(eval::run_decode_bench(bench, options), UserError);
}
