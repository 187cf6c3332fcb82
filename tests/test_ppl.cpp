// Perplexity: the strided-window plan scores every token once; PPL equals exp(mean NLL) of a
// direct forward; bits per byte uses the shard's byte count; prime-eval --ppl end to end.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/perplexity.h"
#include "data/token_shard.h"
#include "model/load_model.h"
#include "test_data_util.h"
#include "util/error.h"

using namespace prime;
using Catch::Matchers::Contains;

namespace {

// -sum log p(ids[t] | ids[begin, t)) for t in [from, end), from one forward over ids[begin, end).
double direct_nll(model::HybridModel& model, const at::Tensor& ids, int64_t begin, int64_t end, int64_t from) {
  at::NoGradGuard no_grad;
  at::Tensor log_probs = model.forward(ids.narrow(0, begin, end - begin).unsqueeze(0)).squeeze(0).to(at::kDouble).log_softmax(-1);
  double total = 0;
  for (int64_t t = from; t < end; ++t) total -= log_probs[t - 1 - begin][ids[t].item<int64_t>()].item<double>();
  return total;
}

}  // namespace

TEST_CASE("perplexity: strided windows score each token once", "[ppl]") {
  for (auto [n, ctx, stride] : std::vector<std::array<int64_t, 3>>{{100, 16, 8}, {100, 16, 15}, {17, 16, 5}, {5, 16, 8}, {50, 7, 1}, {50, 2, 1}}) {
    const auto windows = eval::plan_windows(n, ctx, stride);
    std::vector<int> scored(static_cast<size_t>(n), 0);
    for (const auto& window : windows) {
      CHECK(window.end - window.begin <= ctx);
      CHECK(window.score_from > window.begin);  // every scored token has context
      for (int64_t t = window.score_from; t < window.end; ++t) ++scored[t];
    }
    CHECK(scored[0] == 0);
    for (int64_t t = 1; t < n; ++t) CHECK(scored[t] == 1);
    CHECK(windows.back().end == n);
  }
  CHECK_THROWS_AS(eval::plan_windows(100, 16, 17), UserError);
  CHECK_THROWS_AS(eval::plan_windows(100, 16, 16), UserError);
  CHECK_THROWS_AS(eval::plan_windows(100, 1, 1), UserError);
  CHECK_THROWS_AS(eval::plan_windows(1, 16, 8), UserError);
}

TEST_CASE("perplexity equals exp(mean NLL) of the direct forward", "[ppl]") {
  auto loaded = model::load_model(test::tiny_model(300), {});
  auto& model = *loaded.model;
  const at::Tensor ids = at::randint(0, 300, {45}, at::TensorOptions().dtype(at::kLong));
  const auto logits = eval::model_logits(model);

  // One window covering everything: the plain causal-LM loss.
  eval::PerplexityOptions options;
  options.ctx = 64;
  auto result = eval::perplexity(logits, ids, 0, options);
  const double whole = direct_nll(model, ids, 0, 45, 1);
  CHECK(result.tokens_scored == 44);
  CHECK(result.windows == 1);
  CHECK(result.nll_sum == Approx(whole).epsilon(1e-5));
  CHECK(result.ppl == Approx(std::exp(whole / 44)).epsilon(1e-5));
  CHECK(std::isnan(result.bits_per_byte));

  // Strided: each window scores its new tokens with its own (shorter) context.
  options.ctx = 16;
  options.stride = 6;
  double expected = 0;
  for (const auto& window : eval::plan_windows(45, 16, 6)) expected += direct_nll(model, ids, window.begin, window.end, window.score_from);
  for (int64_t batch : {1, 3}) {
    options.batch = batch;
    // Progress reports start at 0 before the first forward (a rate measured from there), then
    // grow to the tokens scored.
    std::vector<int64_t> reports;
    options.progress = [&](int64_t scored, int64_t total) {
      CHECK(total == 44);
      reports.push_back(scored);
    };
    result = eval::perplexity(logits, ids, 900, options);
    REQUIRE(reports.size() >= 2);
    CHECK(reports.front() == 0);
    CHECK(reports.back() == 44);
    CHECK(std::is_sorted(reports.begin(), reports.end()));
    options.progress = nullptr;
    CHECK(result.tokens_scored == 44);
    CHECK(result.nll_sum == Approx(expected).epsilon(1e-5));
    CHECK(result.ppl == Approx(std::exp(expected / 44)).epsilon(1e-5));
    CHECK(result.bits_per_byte == Approx(expected / std::log(2.0) / 900).epsilon(1e-5));
  }
  // max_tokens: only the first tokens, bytes pro rata.
  options.max_tokens = 30;
  result = eval::perplexity(logits, ids, 900, options);
  CHECK(result.tokens_scored == 29);
  CHECK(result.bytes == Approx(600));
}

TEST_CASE("perplexity on a shard, the model's vocab must cover the shard's ids", "[ppl][bad-input]") {
  test::ScratchDir dir("ppl");
  auto loaded = model::load_model(test::tiny_model(300), {});
  io::TokenShardHeader header;
  header.width = 2;
  header.vocab_size = 300;
  header.source_bytes = 1000;
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 40; ++i) ids.push_back((i * 37) % 300);
  {
    io::TokenShardWriter writer(dir.file("ok.tok"), header);
    writer.append(ids);
    writer.finish();
  }
  eval::PerplexityOptions options;
  options.ctx = 16;
  const auto shard = io::TokenShard::open(dir.file("ok.tok"));
  const auto result = eval::perplexity(eval::model_logits(*loaded.model), shard, options, 300);
  at::Tensor tensor = shard.slice(0, 40);
  const auto direct = eval::perplexity(eval::model_logits(*loaded.model), tensor, 1000, options);
  CHECK(result.nll_sum == Approx(direct.nll_sum).epsilon(1e-9));
  CHECK(result.bits_per_byte == Approx(direct.bits_per_byte).epsilon(1e-9));

  header.vocab_size = 50257;
  ids.push_back(4000);
  io::TokenShardWriter writer(dir.file("wide.tok"), header);
  writer.append(ids);
  writer.finish();
  CHECK_THROWS_WITH(eval::perplexity(eval::model_logits(*loaded.model), io::TokenShard::open(dir.file("wide.tok")),
                                     options, 300),
                    Contains("has id 4000 but the model's vocabulary is 300"));
}

TEST_CASE("prime-eval --ppl prints NLL, PPL and bits per byte and writes JSON", "[ppl][cli]") {
  test::ScratchDir dir("ppl_cli");
  io::TokenShardHeader header;
  header.width = 2;
  header.vocab_size = 300;
  header.source_bytes = 500;
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 100; ++i) ids.push_back((i * 91) % 300);
  io::TokenShardWriter writer(dir.file("d.tok"), header);
  writer.append(ids);
  writer.finish();
  auto result = test::run_cli("prime-eval --model '" + test::tiny_model(300) + "' --device cpu --ppl " + dir.file("d.tok") +
                              " --ctx 32 --stride 16 --json " + dir.file("r.json"));
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("99 tokens scored"));
  CHECK_THAT(result.output, Contains("PPL"));
  const auto json = nlohmann::json::parse(test::read_bytes(dir.file("r.json")));
  CHECK(json["ppl"]["tokens_scored"] == 99);
  CHECK(json["ppl"]["ppl"].get<double>() == Approx(std::exp(json["ppl"]["nll"].get<double>())));
  CHECK(json["ppl"]["bits_per_byte"].is_number());

  test::write_text(dir.file("bad.tok"), "PRIMETOK garbage");
  result = test::run_cli("prime-eval --model '" + test::tiny_model(300) + "' --ppl " + dir.file("bad.tok") + " --json " +
                         dir.file("bad.json"));
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("bad.tok"));
  CHECK_FALSE(std::filesystem::exists(dir.file("bad.json")));
}
