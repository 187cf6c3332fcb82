// prime-search end to end on a tiny model: trials through the real SQLite store, resuming, and a
// worker killed with SIGKILL mid-trial whose trial is re-queued and completed.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <ATen/Context.h>
#include <nlohmann/json.hpp>

#include "search/sweep/spec.h"
#include "search/sweep/sweep.h"
#include "store/store.h"
#include "test_train_util.h"

using namespace prime;
using nlohmann::json;

namespace {

// Two GDN/M2 trials on the tiny teacher (pretrained on a synthetic stream): a short align stage,
// perplexity and a decode run.
json tiny_spec(const std::string& study, const std::string& align_tokens) {
  json spec = {
      {"study", study},
      {"source", test::kTinyTeacher},
      {"data", {{"synthetic", {{"tokens", "8K"}, {"vocab", 64}, {"seed", 3}}}}},
      // The random source learns the stream first, so perplexities mean something.
      {"pretrain", {{"tokens", "8K"}, {"batch_tokens", 256}, {"seq_len", 32}, {"lr", 1e-2}}},
      {"space", {{"layer", {"GDN", "M2"}}, {"ratio", {"1:1"}}}},
      {"stages", {{{"stage", "align"}, {"tokens", align_tokens}}}},
      {"train", {{"seq_len", 32}, {"batch_tokens", 256}, {"lr", 3e-3}}},
      {"eval", {{"ppl", {{"max_tokens", 512}}}, {"decode", {{"batch", 1}, {"prompt", 16}, {"tokens", 4}}}}},
      {"objectives", {"val_ppl:min", "decode_tok_s:max"}},
      {"constraints", {"state_bytes <= 1KiB"}},
  };
  return spec;
}

std::string write_spec(const test::TrainDir& dir, const json& spec) {
  const std::string path = dir / "spec.json";
  std::ofstream(path) << spec.dump(2);
  return path;
}

search::SweepOptions sweep_options(const std::string& spec_path, const std::string& store) {
  search::SweepOptions options;
  options.spec_path = spec_path;
  options.store_url = store;
  options.device = "cpu";
  options.heartbeat_seconds = 0.2;
  options.stale_seconds = 2;
  return options;
}

}  // namespace

TEST_CASE("prime-search runs a tiny sweep into an SQLite store and resumes", "[search]") {
  test::TrainDir dir("search_e2e");
  const std::string store_path = dir / "runs.db";
  json spec = tiny_spec("tiny", "1K");
  spec["stages"].push_back({{"stage", "distill"}, {"tokens", "512"}});
  const auto options = sweep_options(write_spec(dir, spec), store_path);
  std::ostringstream out, log;
  REQUIRE(search::run_search(options, out, log) == 0);
  INFO(log.str());
  CHECK_THAT(out.str(), Catch::Contains("study tiny: 2 trial(s), 2 COMPLETE"));

  auto store = store::Store::open(store_path);
  const store::Study study = store->study("tiny");
  const auto trials = store->trials(study.id);
  REQUIRE(trials.size() == 2);
  // Each trial's line gives its number and the id prime-db show takes.
  for (const auto& trial : trials)
    CHECK_THAT(log.str(), Catch::Contains("trial " + std::to_string(trial.number) + " (id " + std::to_string(trial.id) +
                                          ") COMPLETE ["));
  std::set<std::string> layers;
  for (const auto& trial : trials) {
    CHECK(trial.state == store::TrialState::Complete);
    layers.insert(trial.param("layer")->value);
    REQUIRE(trial.values.size() == 2);
    REQUIRE(trial.values[0]);
    CHECK(*trial.values[0] > 1);   // a perplexity
    CHECK(*trial.values[0] < 64);  // below chance over the 64-id vocabulary: it learned something
    REQUIRE(trial.values[1]);
    CHECK(*trial.values[1] > 0);
    CHECK(std::stod(trial.attrs.at("state_bytes")) > 1024);  // KV + SSM state of a 2-layer model
    // Attributes hold the measured figures exactly: the objective's value reads back from its text.
    CHECK(std::stod(trial.attrs.at("decode_tok_s")) == *trial.values[1]);
    CHECK(trial.attrs.at("train_tokens") == "1536");
    CHECK(trial.infeasible());
    CHECK(store->curve(trial.id, "loss").size() == 6);  // 1K tokens / 256 per step, then 512 / 256
    // Each stage's first step is marked, and the loss curve cut there: align's, then distill's.
    std::vector<int64_t> marks;
    for (const auto& point : store->curve(trial.id, store::kStageMetric)) marks.push_back(point.step);
    CHECK(marks == std::vector<int64_t>{1, 5});
    const auto pieces = store->stage_curves(trial.id, "loss");
    REQUIRE(pieces.size() == 2);
    CHECK(pieces[0].name == "loss (stage 1)");
    CHECK(pieces[0].points.size() == 4);
    CHECK(pieces[1].name == "loss (stage 2)");
    CHECK(pieces[1].points.front().step == 5);
    const std::string trial_dir = trial.attrs.at("dir");
    CHECK(std::filesystem::exists(trial_dir + "/1-align/final/config.json"));
    CHECK(std::filesystem::exists(trial_dir + "/2-distill/final/config.json"));
    CHECK(std::filesystem::exists(trial_dir + "/trial.log"));
  }
  CHECK(layers == std::set<std::string>{"GDN", "M2"});

  // The same command again: nothing left to run, nothing re-run or re-enqueued.
  std::ostringstream again_out, again_log;
  REQUIRE(search::run_search(options, again_out, again_log) == 0);
  CHECK_THAT(again_log.str(), !Catch::Contains("trial 0 (id "));
  const auto after = store->trials(study.id);
  REQUIRE(after.size() == 2);
  for (size_t i = 0; i < after.size(); ++i) CHECK(after[i].finished == trials[i].finished);

  // A different spec under the same study name is refused before anything runs.
  json other = tiny_spec("tiny", "2K");
  const auto other_options = sweep_options(write_spec(dir, other), store_path);
  CHECK_THROWS_WITH(search::run_search(other_options, out, log), Catch::Contains("was made by another spec"));
}

TEST_CASE("prime-search: a bad spec exits 1 naming the key and writes nothing", "[search]") {
  test::TrainDir dir("search_bad");
  json spec = tiny_spec("bad", "1K");
  spec["stages"][0]["tokns"] = "1K";
  const std::string spec_path = write_spec(dir, spec);
  const auto run = test::run_cli("prime-search --spec " + spec_path + " --store " + (dir / "runs.db"));
  CHECK(run.exit_code == 1);
  CHECK_THAT(run.output, Catch::Contains("stages[0].tokns: unknown key"));
  CHECK_FALSE(std::filesystem::exists(dir / "runs.db"));
  CHECK_FALSE(std::filesystem::exists(dir / "runs.db.trials"));
  // Trials on CUDA where there is no GPU: refused before the store is created.
  if (!at::hasCUDA()) {
    json cuda_spec = tiny_spec("cuda", "1K");
    cuda_spec["train"]["device"] = "cuda";
    const auto cuda_run = test::run_cli("prime-search --spec " + write_spec(dir, cuda_spec) + " --store " +
                                        (dir / "runs.db") + " --workers 2");
    CHECK(cuda_run.exit_code == 1);
    CHECK_THAT(cuda_run.output, Catch::Contains("no CUDA device"));
    CHECK_FALSE(std::filesystem::exists(dir / "runs.db"));
  }
}

TEST_CASE("prime-search: a worker killed with SIGKILL mid-trial has its trial re-queued and the sweep completes",
          "[search]") {
  test::TrainDir dir("search_kill");
  const std::string store_path = dir / "runs.db";
  // Trials long enough (64 steps) to be killed in the middle of one.
  const std::string spec_path = write_spec(dir, tiny_spec("kill", "16K"));
  const std::string binary = test::bin_dir() + "/prime-search";
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::freopen((dir / "killed.log").c_str(), "w", stderr);
    ::execl(binary.c_str(), binary.c_str(), "--spec", spec_path.c_str(), "--store", store_path.c_str(), "--device",
            "cpu", "--heartbeat", "0.2", "--stale-after", "2", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait for the first trial to be well under way, then kill the worker.
  std::optional<int64_t> killed_trial;
  for (int i = 0; i < 600 && !killed_trial; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!std::filesystem::exists(store_path)) continue;
    try {
      auto store = store::Store::open(store_path, store::OpenMode::ReadOnly);
      if (auto study = store->find_study("kill"))
        for (const auto& trial : store->trials(study->id, store::TrialState::Running))
          if (std::filesystem::exists(dir / ("runs.db.trials/kill/" + std::to_string(trial.number) + "/1-align/metrics.jsonl")))
            killed_trial = trial.id;
    } catch (const std::exception&) {
      // The store is being created; try again.
    }
  }
  REQUIRE(killed_trial);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  REQUIRE(WIFSIGNALED(status));

  std::ostringstream out, log;
  REQUIRE(search::run_search(sweep_options(spec_path, store_path), out, log) == 0);
  INFO(log.str());
  auto store = store::Store::open(store_path);
  const auto trials = store->trials(store->study("kill").id);
  REQUIRE(trials.size() == 3);  // two, plus the re-run of the killed one
  std::set<std::string> completed;
  int failed = 0;
  for (const auto& trial : trials) {
    if (trial.state == store::TrialState::Complete) {
      completed.insert(trial.param("layer")->value);
      if (trial.retry_of) {
        CHECK(*trial.retry_of == *killed_trial);
        CHECK(trial.retries == 1);
      }
    } else {
      CHECK(trial.state == store::TrialState::Fail);
      CHECK(trial.id == *killed_trial);
      CHECK_THAT(trial.error, Catch::Contains("stale"));
      ++failed;
    }
  }
  CHECK(failed == 1);
  CHECK(completed == std::set<std::string>{"GDN", "M2"});
}
