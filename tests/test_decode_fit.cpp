// `prime-bench decode --fit-batch` (eval/decode_fit.h): the batch is the largest whose measured
// per-sequence cache fits the budget next to the weights and the reserve, hybrids fit more
// sequences than their Transformer in the same memory, the rows run at that batch, and budgets
// that are unknown or too small fail with a clear message.
#include <catch2/catch.hpp>

#include <string>

#include "eval/decode_bench.h"
#include "eval/decode_fit.h"
#include "test_helpers.h"
#include "util/error.h"

using namespace prime;
using Catch::Matchers::Contains;

namespace {

const std::string kTeacher =
    "synthetic:qwen3-0.6b@layers=2,hidden=32,heads=2,kv_heads=1,head_dim=16,intermediate=64,vocab=64,seed=5";
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Cache bytes per sequence at the end of a run of `options` at one sequence, as the row reports.
int64_t run_cache_bytes(eval::BenchModel& bench, int64_t prompt, const eval::DecodeBenchOptions& options) {
  const eval::DecodeBenchRow row = eval::run_decode_point(bench, 1, prompt, "static", options);
  REQUIRE(row.error.empty());
  return row.kv_bytes_per_sequence + row.state_bytes_per_sequence;
}

}  // namespace

TEST_CASE("decode fit: the largest batch the budget holds, hybrids more than the Transformer",
          "[bench][decode][fit]") {
  eval::BenchModel transformer = eval::load_bench_model(kTeacher, {});
  eval::BenchModel hybrid = eval::load_bench_model(kTeacher + "+convert:GDN:1:1", {});
  eval::DecodeBenchOptions options;
  options.context = "synthetic";
  options.new_tokens = 3;
  options.modes = {"static"};
  options.fit_batch = true;
  const int64_t prompt = 200;
  options.prompts = {prompt};

  // A budget that holds the Transformer's weights and 5.5 of its sequences after the reserve.
  const int64_t per_sequence = run_cache_bytes(transformer, prompt, options);
  const eval::BatchFit probe = [&] {
    options.memory_gib = 1.0;
    return eval::fit_decode_batch(transformer, prompt, options);
  }();
  CHECK(probe.cache_bytes_per_sequence == per_sequence);  // measured as a run holds it
  const double room = 5.5 * double(per_sequence + probe.activation_bytes_per_sequence);
  options.memory_gib = (double(probe.weight_bytes) + room) / 0.92 / kGiB;
  const eval::BatchFit fit = eval::fit_decode_batch(transformer, prompt, options);
  INFO("budget " << fit.budget_bytes << ", weights " << fit.weight_bytes << ", reserve " << fit.reserve_bytes
                 << ", per sequence " << fit.cache_bytes_per_sequence);
  CHECK(fit.batch == 5);
  CHECK(fit.reserve_bytes == static_cast<int64_t>(0.08 * double(fit.budget_bytes)));

  // The hybrid's caches are smaller per sequence: more of them fit the same memory.
  const eval::BatchFit hybrid_fit = eval::fit_decode_batch(hybrid, prompt, options);
  CHECK(hybrid_fit.cache_bytes_per_sequence == run_cache_bytes(hybrid, prompt, options));
  CHECK(hybrid_fit.cache_bytes_per_sequence < fit.cache_bytes_per_sequence);
  CHECK(hybrid_fit.batch > fit.batch);

  // The bench runs each model at its own fitted batch and marks the rows.
  const auto rows = eval::run_decode_bench(transformer, options);
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].error.empty());
  CHECK(rows[0].fitted);
  CHECK(rows[0].batch == 5);
  CHECK(rows[0].kv_bytes_per_sequence + rows[0].state_bytes_per_sequence == per_sequence);
  CHECK(eval::to_json(rows, options)["rows"][0]["fitted_batch"] == true);
}

TEST_CASE("decode fit: unknown or too small budgets fail clearly", "[bench][decode][fit][bad-input]") {
  eval::BenchModel bench = eval::load_bench_model(kTeacher, {});
  eval::DecodeBenchOptions options;
  options.fit_batch = true;
  options.new_tokens = 2;
  CHECK_THROWS_WITH(eval::fit_decode_batch(bench, 16, options), Contains("--memory-gib"));  // CPU: no default
  options.memory_gib = double(bench.weight_bytes_per_step) / kGiB;  // the weights and nothing else
  CHECK_THROWS_WITH(eval::fit_decode_batch(bench, 16, options), Contains("not one sequence"));
  CHECK_THROWS_AS(eval::run_decode_bench(bench, options), UserError);

  auto result = test::run_cli("prime-bench decode --model '" + kTeacher +
                              "' --device cpu --fit-batch --batch 2 --memory-gib 1");
  CHECK(result.exit_code == 1);  // --fit-batch chooses the batch
  result = test::run_cli("prime-bench decode --model '" + kTeacher + "' --device cpu --memory-gib 1");
  CHECK(result.exit_code == 1);  // --memory-gib only with --fit-batch
  result = test::run_cli("prime-bench decode --model '" + kTeacher + "' --device cpu --fit-batch --prompt 16");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--memory-gib"));
  result = test::run_cli("prime-bench decode --model '" + kTeacher +
                         "' --device cpu --fit-batch --memory-gib 0.001 --prompt 16 --new-tokens 2 --mode static "
                         "--context synthetic");
  INFO(result.output);
  CHECK(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("largest batch"));
}
