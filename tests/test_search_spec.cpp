// Sweep specs, samplers and successive halving: the parts of prime-search that need no model.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "search/sweep/halving.h"
#include "search/sweep/sampler.h"
#include "search/sweep/spec.h"
#include "util/error.h"

using namespace prime;
using namespace prime::search;
using nlohmann::json;

namespace {

json base_spec() {
  return json::parse(R"({
    "study": "s", "source": "synthetic:qwen3-0.6b@layers=4,vocab=256",
    "data": {"train": "train.tok", "val": "val.tok"},
    "space": {"layer": ["GKA", "GDN", "M2"], "ratio": ["1:1", "1:3"]},
    "stages": [{"stage": "align", "tokens": "2M", "train": "ssm"}, {"stage": "distill", "tokens": "1M"}],
    "train": {"seq_len": 512, "batch_tokens": "16K", "eval_every": 10},
    "eval": {"ppl": true, "recall": ["needle", "mqar"], "decode": {"batch": 16, "prompt": 2048}},
    "objectives": ["val_ppl:min", "decode_tok_s:max", "state_bytes:min"],
    "constraints": ["state_bytes <= 64MiB"],
    "early_stopping": {"kind": "successive_halving", "metric": "val_loss", "eta": 3, "min_tokens": "500K"}
  })");
}

// The message of the UserError parse_spec throws for `spec` (empty when it parses).
std::string spec_error(const json& spec) {
  try {
    parse_spec(spec);
  } catch (const UserError& error) {
    return error.what();
  }
  return "";
}

}  // namespace

TEST_CASE("sweep spec: the documented example parses", "[search]") {
  const SweepSpec spec = parse_spec(base_spec());
  CHECK(spec.study == "s");
  REQUIRE(spec.space.size() == 2);
  CHECK(spec.space[0].name == "layer");
  CHECK(spec.space[0].choices.size() == 3);
  REQUIRE(spec.stages.size() == 2);
  CHECK(spec.stages[0].stage == train::Stage::Align);
  REQUIRE(spec.objectives.size() == 3);
  CHECK(spec.objectives[1].direction == store::Direction::Maximize);
  REQUIRE(spec.constraints.size() == 1);
  CHECK(spec.constraints[0].bound == 64.0 * 1024 * 1024);
  CHECK(spec.constraints[0].satisfied(64.0 * 1024 * 1024));
  CHECK_FALSE(spec.constraints[0].satisfied(64.0 * 1024 * 1024 + 1));
  CHECK(spec.early_stopping.min_tokens == 500 * 1024);
  CHECK(spec.early_stopping.metrics.at(0).direction == store::Direction::Minimize);
  CHECK(spec.retries == 1);
}

TEST_CASE("sweep spec: unknown keys are errors naming their JSON path", "[search]") {
  json spec = base_spec();
  spec["sapce"] = 1;
  CHECK_THAT(spec_error(spec), Catch::StartsWith("sapce: unknown key"));
  spec = base_spec();
  spec["space"]["lr"] = {{"loguniform", {1e-4, 1e-3}}};
  CHECK_THAT(spec_error(spec), Catch::StartsWith("space.lr.loguniform: unknown key"));
  spec = base_spec();
  spec["stages"][1]["lrr"] = 1e-3;
  CHECK_THAT(spec_error(spec), Catch::StartsWith("stages[1].lrr: unknown key"));
  spec = base_spec();
  spec["eval"]["decode"]["batchsize"] = 4;
  CHECK_THAT(spec_error(spec), Catch::StartsWith("eval.decode.batchsize: unknown key"));
  spec = base_spec();
  spec["space"]["dropout"] = {0.1};
  CHECK_THAT(spec_error(spec), Catch::StartsWith("space.dropout[0]: 'dropout' is not a searchable parameter"));
  spec = base_spec();
  spec["space"]["ratio"][1] = "3-1";
  CHECK_THAT(spec_error(spec), Catch::StartsWith("space.ratio[1]: "));
  spec = base_spec();
  spec["train"]["batch_tokens"] = "16Q";
  CHECK_THAT(spec_error(spec), Catch::StartsWith("train.batch_tokens: '16Q' is not a number or size"));
}

TEST_CASE("sweep spec: an empty search space is refused", "[search]") {
  json spec = base_spec();
  spec["space"] = json::object();
  CHECK_THAT(spec_error(spec), Catch::Contains("the search space is empty"));
  spec = base_spec();
  spec["space"]["layer"] = json::array();
  CHECK_THAT(spec_error(spec), Catch::StartsWith("space.layer: an empty list"));
  spec = base_spec();
  spec["space"].erase("layer");
  CHECK_THAT(spec_error(spec), Catch::StartsWith("space.layer: required"));
  spec["convert"] = {{"layer", "GDN"}};
  CHECK(spec_error(spec).empty());
}

TEST_CASE("sweep spec: objectives and constraints no trial produces are refused", "[search]") {
  json spec = base_spec();
  spec["objectives"] = {"val_pll:min"};
  const std::string message = spec_error(spec);
  CHECK_THAT(message, Catch::StartsWith("objectives[0]: no trial produces 'val_pll'"));
  CHECK_THAT(message, Catch::Contains("val_ppl"));
  spec = base_spec();
  spec["eval"].erase("decode");
  CHECK_THAT(spec_error(spec), Catch::StartsWith("objectives[1]: no trial produces 'decode_tok_s'"));
  spec = base_spec();
  spec["constraints"] = {"state_bytes ~ 4"};
  CHECK_THAT(spec_error(spec), Catch::StartsWith("constraints[0]: expected \"METRIC <= VALUE\""));
  spec = base_spec();
  spec["objectives"] = {"val_ppl:smallest"};
  CHECK_THAT(spec_error(spec), Catch::StartsWith("objectives[0]: "));
}

TEST_CASE("sweep spec: ranges need the random sampler, early stopping needs intermediate values", "[search]") {
  json spec = base_spec();
  spec["space"]["lr"] = {{"log_uniform", {1e-4, 3e-3}}};
  CHECK_THAT(spec_error(spec), Catch::StartsWith("space.lr: a range needs the random sampler"));
  spec["sampler"] = {{"kind", "random"}, {"seed", 7}};
  CHECK_THAT(spec_error(spec), Catch::StartsWith("sampler.trials: "));
  spec["sampler"]["trials"] = 5;
  CHECK(spec_error(spec).empty());
  spec["space"]["lr"] = {{"log_uniform", {0, 3e-3}}};
  CHECK_THAT(spec_error(spec), Catch::StartsWith("space.lr.log_uniform: a log-uniform range needs low > 0"));

  spec = base_spec();
  spec["train"].erase("eval_every");
  CHECK_THAT(spec_error(spec), Catch::StartsWith("early_stopping.metric: val_loss is measured only with train.eval_every"));
  spec = base_spec();
  spec["early_stopping"].erase("metric");
  spec["early_stopping"]["metrics"] = {"val_loss", "tokens_per_s"};
  CHECK_THAT(spec_error(spec), Catch::StartsWith("early_stopping.metrics[1]: say the direction of 'tokens_per_s'"));
  spec["early_stopping"]["metrics"][1] = "tokens_per_s:max";
  CHECK(parse_spec(spec).early_stopping.metrics.size() == 2);
}

TEST_CASE("sweep spec: sizes and quantities", "[search]") {
  CHECK(parse_quantity("64MiB", "x") == 64.0 * 1024 * 1024);
  CHECK(parse_quantity("500MB", "x") == 500e6);
  CHECK(parse_quantity("2M", "x") == 2.0 * 1024 * 1024);
  CHECK(parse_quantity("1.5B", "x") == 1.5 * 1024 * 1024 * 1024);
  CHECK(parse_quantity("1e-3", "x") == 1e-3);
  CHECK(parse_quantity(4096, "x") == 4096);
  CHECK_THROWS_WITH(parse_quantity("MiB", "a.b"), Catch::StartsWith("a.b: 'MiB' is not a number"));
  train::TrainOptions options;
  apply_train_value(options, "tokens", "2M", "t");
  CHECK(options.tokens == 2 * 1024 * 1024);
  CHECK_THROWS_WITH(apply_train_value(options, "tokens", "1.5", "stages[0].tokens"),
                    Catch::StartsWith("stages[0].tokens: expected a positive whole count"));
  CHECK_THROWS_WITH(apply_train_value(options, "schedule", "linear", "space.schedule[0]"),
                    Catch::StartsWith("space.schedule[0]: "));
}

TEST_CASE("grid sampling: every combination once, the last parameter fastest", "[search]") {
  const SweepSpec spec = parse_spec(base_spec());
  const auto trials = sample_trials(spec);
  REQUIRE(trials.size() == 6);
  CHECK(trials[0] == ParamSet{{"layer", "GKA"}, {"ratio", "1:1"}});
  CHECK(trials[1] == ParamSet{{"layer", "GKA"}, {"ratio", "1:3"}});  // keys in name order; choices as listed
  std::set<std::string> seen;
  for (const auto& trial : trials) seen.insert(trial[0].second.dump() + trial[1].second.dump());
  CHECK(seen.size() == 6);
  CHECK(sample_trials(spec) == trials);
}

TEST_CASE("random sampling: the same seed gives the same trials, ranges are respected", "[search]") {
  json spec_json = base_spec();
  spec_json["space"]["lr"] = {{"log_uniform", {1e-4, 1e-2}}};
  spec_json["space"]["temperature"] = {{"uniform", {1, 2}}};
  spec_json["sampler"] = {{"kind", "random"}, {"seed", 11}, {"trials", 50}};
  const auto first = sample_trials(parse_spec(spec_json));
  const auto again = sample_trials(parse_spec(spec_json));
  REQUIRE(first.size() == 50);
  CHECK(first == again);
  spec_json["sampler"]["seed"] = 12;
  CHECK(sample_trials(parse_spec(spec_json)) != first);
  std::set<std::string> layers;
  int below_1e3 = 0;
  for (const auto& trial : first) {
    for (const auto& [name, value] : trial) {
      if (name == "lr") {
        CHECK(value.get<double>() >= 1e-4);
        CHECK(value.get<double>() < 1e-2);
        below_1e3 += value.get<double>() < 1e-3;
      }
      if (name == "temperature") CHECK((value.get<double>() >= 1 && value.get<double>() < 2));
      if (name == "layer") layers.insert(value.get<std::string>());
    }
  }
  CHECK(layers.size() == 3);
  CHECK(below_1e3 > 10);  // log-uniform: half the draws below the geometric middle
  CHECK(below_1e3 < 40);
  // The store's text round-trips the values exactly.
  for (const auto& param : to_trial_params(first[0]))
    for (const auto& [name, value] : first[0])
      if (name == param.name) CHECK(param_json(param) == value);
  // ... as the shortest text that does so: what the spec wrote, not 17 digits.
  const auto written = to_trial_params({{"lr", 1e-9}, {"wd", 0.003}, {"steps", 200}, {"ema", 0.1 + 0.2}});
  CHECK(written[0].value == "1e-09");
  CHECK(written[1].value == "0.003");
  CHECK(written[2].value == "200");
  CHECK(written[3].value == "0.30000000000000004");  // not 0.3: that is another double
}

TEST_CASE("successive halving: rungs and single-objective decisions", "[search]") {
  EarlyStopping rule;
  rule.metrics = {{"val_loss", store::Direction::Minimize}};
  rule.eta = 3, rule.min_tokens = 100, rule.min_trials = 3;
  CHECK(rung_tokens(rule, 0) == 100);
  CHECK(rung_tokens(rule, 2) == 900);
  CHECK(rung_at(rule, 99) == -1);
  CHECK(rung_at(rule, 300) == 1);
  CHECK(rung_at(rule, 899) == 1);
  const std::vector<store::Direction> min = {store::Direction::Minimize};
  // Six trials at a rung: the best ceil(6/3) = 2 (values 1 and 2) go on.
  const std::vector<std::vector<double>> values = {{5}, {3}, {1}, {4}, {2}, {6}};
  std::vector<bool> kept;
  for (size_t i = 0; i < values.size(); ++i) kept.push_back(keep_at_rung(values, min, i, 3, 3));
  CHECK(kept == std::vector<bool>{false, false, true, false, true, false});
  // Too few trials at the rung to judge: all go on.
  CHECK(keep_at_rung({{5}, {1}}, min, 0, 3, 3));
  // Ties stand together; a missing value ranks last.
  const std::vector<std::vector<double>> ties = {{1}, {1}, {1}, {5}, {NAN}, {7}};
  CHECK(keep_at_rung(ties, min, 2, 3, 3));
  CHECK_FALSE(keep_at_rung(ties, min, 3, 3, 3));
  CHECK_FALSE(keep_at_rung(ties, min, 4, 3, 3));
  // Maximising flips the order.
  CHECK(keep_at_rung(values, {store::Direction::Maximize}, 5, 3, 3));
  CHECK_FALSE(keep_at_rung(values, {store::Direction::Maximize}, 2, 3, 3));
}

TEST_CASE("successive halving: several metrics by Pareto rank", "[search]") {
  const std::vector<store::Direction> both_min = {store::Direction::Minimize, store::Direction::Minimize};
  // Front 0: (1,5) (5,1) (3,3); front 1: (4,4) (2,6); front 2: (6,6). n = 6, eta 3: the two best
  // ranks' worth of trials go on, which is the whole first front (its three share rank 0).
  const std::vector<std::vector<double>> points = {{1, 5}, {5, 1}, {3, 3}, {4, 4}, {2, 6}, {6, 6}};
  std::vector<bool> kept;
  for (size_t i = 0; i < points.size(); ++i) kept.push_back(keep_at_rung(points, both_min, i, 3, 3));
  CHECK(kept == std::vector<bool>{true, true, true, false, false, false});
  // eta 2: ceil(6/2) = 3 go on — still exactly the first front.
  CHECK(keep_at_rung(points, both_min, 2, 2, 3));
  CHECK_FALSE(keep_at_rung(points, both_min, 3, 2, 3));
  // A mixed direction: minimise the first, maximise the second. Front 0: (1,5) (2,6) (6,6)? (6,6)
  // is dominated by (2,6); front 0 = (1,5), (2,6); with eta 3 both go on, (5,1) does not.
  const std::vector<store::Direction> mixed = {store::Direction::Minimize, store::Direction::Maximize};
  CHECK(keep_at_rung(points, mixed, 0, 3, 3));
  CHECK(keep_at_rung(points, mixed, 4, 3, 3));
  CHECK_FALSE(keep_at_rung(points, mixed, 1, 3, 3));
}

TEST_CASE("every sweep template in templates/sweeps parses", "[search]") {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::path(PRIME_SOURCE_DIR) / "templates/sweeps")) {
    INFO(entry.path().string());
    const SweepSpec spec = read_spec(entry.path());
    CHECK_FALSE(sample_trials(spec).empty());
    ++count;
  }
  CHECK(count >= 3);
}
