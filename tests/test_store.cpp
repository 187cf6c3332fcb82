// Experiment store: studies, the trial life cycle, curves, artifacts and layer scores, on every
// backend under test (SQLite always, PostgreSQL when PRIME_TEST_POSTGRES_URL is set).
#include <cmath>
#include <thread>

#include "store/store.h"
#include "test_store_util.h"
#include "util/error.h"

using namespace prime::store;
using prime::test::StoreScratch;

namespace {
StudyConfig two_objectives(const std::string& name) {
  return {name, {{"val_ppl", Direction::Minimize}, {"decode_tok_s", Direction::Maximize}}, R"({"sampler":"grid"})",
          {"state_bytes <= 64MiB"}};
}
}  // namespace

TEST_CASE("Store: studies are created once and keep their objectives, spec and constraints", "[store]") {
  StoreScratch scratch("studies");
  for (const auto& backend : prime::test::test_stores(scratch, "studies")) {
    SECTION(backend.backend) {
      auto store = Store::open(backend.url);
      CHECK(store->backend() == backend.backend);
      CHECK(store->schema_version() == Store::current_schema_version());
      const Study created = store->create_study(two_objectives("cmp"));
      const Study again = store->create_study(two_objectives("cmp"));
      CHECK(again.id == created.id);
      REQUIRE(again.objectives.size() == 2);
      CHECK(objective_text(again.objectives[1]) == "decode_tok_s:max");
      CHECK(again.spec_json == R"({"sampler":"grid"})");
      CHECK(again.constraints == std::vector<std::string>{"state_bytes <= 64MiB"});
      StudyConfig other = two_objectives("cmp");
      other.objectives[1].direction = Direction::Minimize;
      CHECK_THROWS_WITH(store->create_study(other), Catch::Contains("already exists") && Catch::Contains("decode_tok_s:max"));
      CHECK_THROWS_AS(store->study("nope"), prime::UserError);
      CHECK(store->studies().size() == 1);
    }
  }
}

TEST_CASE("Store: SQL metacharacters and quotes in names and values are stored verbatim", "[store]") {
  StoreScratch scratch("quotes");
  const std::string nasty = "it's \"quoted\"; DROP TABLE trials; -- ? $1 %s \\ é";
  for (const auto& backend : prime::test::test_stores(scratch, "quotes")) {
    SECTION(backend.backend) {
      auto store = Store::open(backend.url);
      const Study study = store->create_study({nasty, {{nasty, Direction::Minimize}}, "{\"k\": \"" + nasty + "\"}", {nasty}});
      const int64_t id = store->enqueue_trial(study.id, {{nasty, nasty, "categorical"}});
      auto claimed = store->claim_trial(study.id, nasty);
      REQUIRE(claimed);
      store->log_metrics(id, {{nasty, 3, 1.5}});
      store->add_artifact(id, {nasty, nasty, nasty});
      REQUIRE(store->finish_trial(id, {TrialState::Complete, {{nasty, 2.0}}, {{nasty, nasty}}, std::nullopt, ""}));
      const TrialDetail detail = store->trial_detail(id);
      CHECK(detail.study.name == nasty);
      CHECK(detail.study.constraints == std::vector<std::string>{nasty});
      CHECK(detail.trial.worker == nasty);
      CHECK(detail.trial.params.at(0).name == nasty);
      CHECK(detail.trial.params.at(0).value == nasty);
      CHECK(detail.trial.attrs.at(nasty) == nasty);
      CHECK(detail.trial.values.at(0) == 2.0);
      CHECK(detail.metrics.at(0).name == nasty);
      CHECK(detail.artifacts.at(0).path == nasty);
      CHECK(store->trials().size() == 1);  // the table is still there
    }
  }
}

TEST_CASE("Store: the trial life cycle, curves, intermediate values, artifacts and layer scores", "[store]") {
  StoreScratch scratch("cycle");
  for (const auto& backend : prime::test::test_stores(scratch, "cycle")) {
    SECTION(backend.backend) {
      auto store = Store::open(backend.url);
      const Study study = store->create_study(two_objectives("cycle"));
      const auto ids = store->enqueue_trials(study.id, {{{"layer", "GKA", "categorical"}, {"lr", "0.001", "float"}},
                                                        {{"layer", "GDN", "categorical"}, {"lr", "0.002", "float"}},
                                                        {{"layer", "M2", "categorical"}, {"lr", "0.003", "float"}}});
      REQUIRE(ids.size() == 3);
      CHECK_THROWS_AS(store->enqueue_trial(study.id, {{"x", "1", "vector"}}), prime::UserError);
      CHECK(store->trials(study.id, TrialState::Waiting).size() == 3);

      // Claims go in number order; each claim is RUNNING with the worker recorded.
      std::vector<Trial> running;
      for (int index = 0; index < 3; ++index) running.push_back(*store->claim_trial(study.id, "w" + std::to_string(index)));
      CHECK_FALSE(store->claim_trial(study.id, "late"));
      CHECK(running[0].number == 0);
      CHECK(running[2].param("layer")->value == "M2");
      CHECK(running[1].state == TrialState::Running);
      CHECK(running[1].heartbeat > 0);
      CHECK(store->heartbeat(running[0].id));

      // Curves through the MetricsSink, batched (by count here: 3 rows per batch), NaN kept as missing.
      {
        auto sink = store->metrics_sink(running[0].id, {3600, 3});
        for (int step = 0; step < 10; ++step)
          sink->write({"step", step * 10, {{"loss", 5.0 - step * 0.1}, {"lr", 1e-3}}, {{"stage", "align"}}});
        sink->write({"eval", 95, {{"val_loss", std::nan("")}}, {}});
      }
      store->log_metrics(running[1].id, {{"loss", 0, 6.0}, {"loss", 40, 4.0}, {"loss", 90, 3.0}});
      const auto curve = store->curve(running[0].id, "loss");
      REQUIRE(curve.size() == 10);
      CHECK(curve[9].step == 90);
      CHECK(curve[9].value == Approx(4.1));
      CHECK(std::isnan(store->curve(running[0].id, "val_loss").at(0).value));
      CHECK(store->metric_names(running[0].id) == std::vector<std::string>{"loss", "lr", "val_loss"});
      const auto at_50 = store->intermediate_values(study.id, "loss", 50);
      REQUIRE(at_50.size() == 2);
      CHECK(at_50[0].step == 50);
      CHECK(at_50[0].value == Approx(4.5));
      CHECK(at_50[1].step == 40);
      CHECK(at_50[1].value == 4.0);

      // Endings: complete with values and attributes, pruned with its step, failed with its error.
      CHECK_THROWS_AS(store->finish_trial(running[1].id, {TrialState::Pruned, {}, {}, std::nullopt, ""}), prime::UserError);
      CHECK_THROWS_AS(store->finish_trial(running[0].id, {TrialState::Complete, {{"nope", 1}}, {}, std::nullopt, ""}),
                      prime::UserError);
      CHECK(store->finish_trial(running[0].id, {TrialState::Complete, {{"val_ppl", 12.5}, {"decode_tok_s", 900}},
                                                {{"state_bytes", "1048576"}, {"infeasible", "1"}}, std::nullopt, ""}));
      CHECK(store->finish_trial(running[1].id, {TrialState::Pruned, {{"val_ppl", 30}}, {}, 40, ""}));
      CHECK(store->finish_trial(running[2].id, {TrialState::Fail, {}, {}, std::nullopt, "out of memory"}));
      CHECK_FALSE(store->finish_trial(running[2].id, {TrialState::Complete, {}, {}, std::nullopt, ""}));
      CHECK_FALSE(store->heartbeat(running[2].id));

      const TrialDetail done = store->trial_detail(running[0].id);
      CHECK(done.trial.state == TrialState::Complete);
      CHECK(done.trial.values[1] == 900.0);
      CHECK(done.trial.infeasible());
      CHECK(trial_number(done.trial, study, "state_bytes") == 1048576.0);
      CHECK(trial_number(done.trial, study, "lr") == 0.001);
      CHECK_FALSE(trial_number(done.trial, study, "missing"));
      REQUIRE(done.metrics.size() == 3);
      CHECK(done.metrics[0].count == 10);
      CHECK(done.metrics[0].last == Approx(4.1));
      CHECK(done.metrics[0].min == Approx(4.1));
      const Trial pruned = *store->find_trial(running[1].id);
      CHECK(pruned.pruned_step == 40);
      CHECK(pruned.values[0] == 30.0);
      CHECK_FALSE(pruned.values[1]);
      CHECK(store->find_trial(running[2].id)->error == "out of memory");
      CHECK(store->trials(study.id, TrialState::Complete).size() == 1);
      CHECK(store->studies().at(0).trial_counts.at("FAIL") == 1);

      store->add_artifact(running[0].id, {"checkpoint", "/runs/t0/model", "ab12"});
      CHECK(store->artifacts(running[0].id).at(0).sha256 == "ab12");
      store->add_layer_scores({{"synthetic:tiny", "kl", 1, 0.5, 2.0, "cpu"}, {"synthetic:tiny", "kl", 0, 0.25, 1.5, "cpu"},
                               {"synthetic:tiny", "attn", 0, 0.9, 0.1, "cuda:0"}});
      const auto kl = store->layer_scores("synthetic:tiny", "kl");
      REQUIRE(kl.size() == 2);
      CHECK(kl[0].layer == 0);
      CHECK(kl[0].cost_seconds == 1.5);
      CHECK(store->layer_scores().size() == 3);
    }
  }
}

TEST_CASE("Store: a stale RUNNING trial is failed and re-queued once", "[store]") {
  StoreScratch scratch("stale");
  for (const auto& backend : prime::test::test_stores(scratch, "stale")) {
    SECTION(backend.backend) {
      auto store = Store::open(backend.url);
      const Study study = store->create_study(two_objectives("stale"));
      store->enqueue_trials(study.id, {{{"layer", "GKA", "categorical"}}, {{"layer", "GDN", "categorical"}}});
      const Trial first = *store->claim_trial(study.id, "dead-worker");
      const Trial second = *store->claim_trial(study.id, "live-worker");
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      CHECK(store->heartbeat(second.id));
      CHECK(store->fail_stale_trials(study.id, 0.2, 1) == std::vector<int64_t>{first.id});
      const Trial failed = *store->find_trial(first.id);
      CHECK(failed.state == TrialState::Fail);
      CHECK_THAT(failed.error, Catch::Contains("stale heartbeat") && Catch::Contains("dead-worker"));
      CHECK_FALSE(store->finish_trial(first.id, {TrialState::Complete, {}, {}, std::nullopt, ""}));

      // The copy: same params, one retry used; when it goes stale too it is not re-queued again.
      const Trial copy = *store->claim_trial(study.id, "another");
      CHECK(copy.retry_of == first.id);
      CHECK(copy.retries == 1);
      CHECK(copy.param("layer")->value == "GKA");
      CHECK(copy.number == 2);
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      store->heartbeat(second.id);
      CHECK(store->fail_stale_trials(study.id, 0.2, 1) == std::vector<int64_t>{copy.id});
      CHECK_FALSE(store->claim_trial(study.id, "another"));
      CHECK(store->trials(study.id, TrialState::Fail).size() == 2);
    }
  }
}
