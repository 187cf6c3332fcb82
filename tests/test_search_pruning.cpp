// Successive halving end to end: a real sweep on the tiny model (one worker, so trials reach the
// rung in number order) where the trials that cannot learn (learning rate 1e-9) are PRUNED at
// the rung's step and those that do (1e-2) train to the full budget; once on one metric, once
// on the Pareto rank of two; and on the evaluation's val_loss, decided at the first evaluation
// at or after the rung's step.
#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "search/sweep/sweep.h"
#include "store/store.h"
#include "test_train_util.h"

using namespace prime;
using nlohmann::json;

namespace {

constexpr int64_t kBatchTokens = 256;
constexpr int64_t kBudgetSteps = 8;  // 2K tokens of pt per trial
constexpr int64_t kRungStep = 5;     // rung 0: min_tokens 1280; rung 1 (2560) is past the budget

// layer {GDN, M2} x lr {1e-2, 1e-9}: trial numbers 0 GDN/1e-2, 1 GDN/1e-9, 2 M2/1e-2, 3 M2/1e-9.
json pruning_spec(const std::string& study, const json& metrics) {
  json rule = {{"kind", "successive_halving"}, {"eta", 2}, {"min_tokens", kRungStep * kBatchTokens}, {"min_trials", 2}};
  rule[metrics.is_array() ? "metrics" : "metric"] = metrics;
  return {
      {"study", study},
      {"source", test::kTinyTeacher},
      {"data", {{"synthetic", {{"tokens", "4K"}, {"vocab", 64}, {"seed", 3}}}}},
      {"space", {{"layer", {"GDN", "M2"}}, {"ratio", {"1:1"}}, {"lr", {1e-2, 1e-9}}}},
      {"stages", {{{"stage", "pt"}, {"tokens", kBudgetSteps * kBatchTokens}}}},
      {"train", {{"seq_len", 32}, {"batch_tokens", kBatchTokens}, {"schedule", "constant"}}},
      {"eval", {{"ppl", {{"max_tokens", 256}}}}},
      {"objectives", {"val_ppl:min"}},
      {"early_stopping", rule},
  };
}

// Runs `spec` on the CPU with its store in `dir`, checks that half the trials were pruned, and
// returns the store.
std::unique_ptr<store::Store> run_pruning_sweep(const test::TrainDir& dir, const json& spec) {
  const std::string spec_path = dir / "spec.json";
  std::ofstream(spec_path) << spec.dump(2);
  search::SweepOptions options;
  options.spec_path = spec_path;
  options.store_url = dir / "runs.db";
  options.device = "cpu";
  std::ostringstream out, log;
  REQUIRE(search::run_search(options, out, log) == 0);
  INFO(log.str() << out.str());
  CHECK_THAT(out.str(), Catch::Contains("4 trial(s), 2 COMPLETE, 2 PRUNED"));
  return store::Store::open(options.store_url);
}

// Runs the sweep; checks which trials were pruned, where, and that the rest ran to the end.
void check_pruned(const std::string& study_name, const json& metrics, const std::vector<std::string>& rung_metrics) {
  test::TrainDir dir("search_prune");
  auto store = run_pruning_sweep(dir, pruning_spec(study_name, metrics));
  const auto trials = store->trials(store->study(study_name).id);
  REQUIRE(trials.size() == 4);
  for (const auto& trial : trials) {
    INFO("trial " << trial.number << " lr " << trial.param("lr")->value);
    const auto loss = store->curve(trial.id, "loss");
    REQUIRE_FALSE(loss.empty());
    for (const auto& metric : rung_metrics) {
      const auto rung = store->curve(trial.id, "rung." + metric);
      REQUIRE(rung.size() == 1);  // every trial reached rung 0 and logged its values there
      CHECK(rung[0].step == 0);
    }
    if (trial.number % 2 == 1) {  // lr 1e-9
      CHECK(trial.state == store::TrialState::Pruned);
      CHECK(trial.pruned_step == kRungStep);
      CHECK(loss.back().step == kRungStep);
      CHECK(trial.attrs.at("train_tokens") == std::to_string(kRungStep * kBatchTokens));
      CHECK_FALSE(trial.values.at(0));  // a pruned trial is not evaluated
    } else {
      CHECK(trial.state == store::TrialState::Complete);
      CHECK_FALSE(trial.pruned_step);
      CHECK(loss.back().step == kBudgetSteps);
      CHECK(trial.attrs.at("train_tokens") == std::to_string(kBudgetSteps * kBatchTokens));
      CHECK(trial.values.at(0));
    }
  }
}

}  // namespace

TEST_CASE("prime-search: successive halving prunes the trials that fall behind at the rung's step", "[search]") {
  check_pruned("halving", "loss", {"loss"});
}

TEST_CASE("prime-search: successive halving on the Pareto rank of two metrics prunes the dominated trials", "[search]") {
  // At the rung (step 5) lr 1e-2 has loss ~3.45 and grad norm 0.87-1.02, lr 1e-9 loss ~4.15 and
  // grad norm 0.99-1.19: each slow trial is dominated by the fast one before it.
  check_pruned("pareto", json::array({"loss:min", "grad_norm:min"}), {"loss", "grad_norm"});
}

TEST_CASE("prime-search: successive halving on val_loss ranks each trial by the evaluation at the rung", "[search]") {
  // Evaluations every 2 steps (2, 4, 6, 8); rung 0 is at step 5, so its values are step 6's: the
  // evaluation there and the training loss logged with it, never step 4's evaluation.
  test::TrainDir dir("search_prune_val");
  json spec = pruning_spec("val", json::array({"val_loss:min", "loss:min"}));
  spec["train"]["eval_every"] = 2;
  spec["train"]["val_tokens"] = 128;
  auto store = run_pruning_sweep(dir, spec);
  for (const auto& trial : store->trials(store->study("val").id)) {
    INFO("trial " << trial.number << " lr " << trial.param("lr")->value);
    const auto val = store->curve(trial.id, "val_loss");
    const auto rung = store->curve(trial.id, "rung.val_loss");
    REQUIRE(rung.size() == 1);
    const auto at_six = std::find_if(val.begin(), val.end(), [](const auto& point) { return point.step == 6; });
    REQUIRE(at_six != val.end());
    CHECK(rung[0].value == at_six->value);
    if (trial.number % 2 == 1) {
      CHECK(trial.state == store::TrialState::Pruned);
      CHECK(trial.pruned_step == 6);
    } else {
      CHECK(trial.state == store::TrialState::Complete);
    }
  }
}
