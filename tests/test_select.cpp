// prime-select: the scorers find the planted long-range layers of a toy model, are deterministic,
// their CSV drives prime-convert --scores, and bad input is a clear exit 1.
#include <catch2/catch.hpp>

#include <algorithm>
#include <sstream>

#include "search/scorers/ratio_report.h"
#include "search/scorers/select.h"
#include "test_convert_util.h"
#include "test_select_util.h"

namespace prime::test {
namespace {

struct PlantedFixture {
  ConvertTempDir dir{"select"};
  std::string model = (dir / "planted").string();
  std::string shard = (dir / "copy.tok").string();
  PlantedFixture() {
    write_planted_model(model);
    write_copy_shard(shard, 40);
  }
  search::SelectOptions options(const std::string& scorer) const {
    search::SelectOptions options;
    options.source = model;
    options.scorer = scorer;
    options.data = shard;
    options.settings.window = 8;
    options.settings.seq_len = 48;
    options.settings.sequences = 4;
    options.settings.batch = 4;
    options.settings.ratios = {"1:1"};
    return options;
  }
};

// Every long-range layer scores below every local one (lower = keep as attention).
void require_long_range_kept(const search::SelectOutcome& outcome) {
  double worst_long = -1e300, best_local = 1e300;
  for (int64_t layer = 0; layer < kToyLayers; ++layer) {
    const bool long_range = std::count(kLongRangeLayers.begin(), kLongRangeLayers.end(), layer) > 0;
    const double score = outcome.result.scores[layer];
    if (long_range) worst_long = std::max(worst_long, score);
    else best_local = std::min(best_local, score);
  }
  std::ostringstream table;
  search::print_select(outcome, table);
  INFO(table.str());
  REQUIRE(worst_long < best_local);
  REQUIRE(outcome.ratios.at(0).kept == kLongRangeLayers);
  REQUIRE(outcome.ratios.at(0).predicted.has_value());
  REQUIRE(outcome.result.total_increase.has_value());
}

}  // namespace

TEST_CASE("select: every scorer keeps the planted long-range layers as attention", "[select]") {
  PlantedFixture fixture;
  for (const std::string scorer : {"swa-sensitivity", "attention-locality"}) {
    INFO(scorer);
    require_long_range_kept(search::run_select(fixture.options(scorer), nullptr));
  }
  // Zero-shot, GKA's initialisation from attention already tells the copy heads apart (GDN's
  // does not here: every layer's zero-shot GDN output is about as far from its attention's).
  auto zero_shot = fixture.options("linearization-error");
  zero_shot.settings.layer = "GKA";
  require_long_range_kept(search::run_select(zero_shot, nullptr));
  auto aligned = fixture.options("linearization-error");
  aligned.settings.align_steps = 40;
  aligned.settings.lr = 1e-2;
  require_long_range_kept(search::run_select(aligned, nullptr));
  auto restore = fixture.options("kl-restore");
  restore.settings.layer = "GDN";
  restore.settings.restore_align_steps = 40;
  restore.settings.restore_steps = 10;
  restore.settings.lr = 1e-2;
  require_long_range_kept(search::run_select(restore, nullptr));
}

TEST_CASE("select: scores are deterministic for a seed and depend on it", "[select]") {
  PlantedFixture fixture;
  auto options = fixture.options("linearization-error");
  options.settings.align_steps = 5;
  options.settings.sequences = 4;
  const auto first = search::run_select(options, nullptr).result.scores;
  REQUIRE(search::run_select(options, nullptr).result.scores == first);
  options.settings.seed = 1;
  REQUIRE(search::run_select(options, nullptr).result.scores != first);
}

TEST_CASE("select: baselines place as prime-convert does, predictions are calibrated", "[select]") {
  using search::placement_scores;
  REQUIRE(convert::uniform_placement(12, 3) == std::vector<int64_t>{2, 6, 10});
  convert::LayerScores table;
  table.scores = placement_scores(12, {2, 6, 10});
  REQUIRE(convert::lowest_scoring_layers(table, 3) == std::vector<int64_t>{2, 6, 10});
  const auto choices = search::choose_ratios(table.scores, {}, std::nullopt, {"1:1", "1:3"}, "middle");
  REQUIRE(choices.at(0).kept == convert::middle_placement(12, 6));
  REQUIRE(choices.at(1).kept == convert::middle_placement(12, 3));
  REQUIRE_FALSE(choices.at(0).predicted.has_value());
  // Calibration: replacing nothing predicts 0, everything the measured total, shares in between.
  const std::vector<double> cost = {1, 3, -0.5, 0};
  REQUIRE(search::predicted_increase(cost, 2.0, {0, 1, 2, 3}) == 0.0);
  REQUIRE(search::predicted_increase(cost, 2.0, {}) == Approx(2.0));
  REQUIRE(search::predicted_increase(cost, 2.0, {1}) == Approx(0.5));
}

TEST_CASE("prime-select CLI: the CSV round-trips through prime-convert --scores, and --select reuses scores", "[select][cli]") {
  PlantedFixture fixture;
  const std::string csv = (fixture.dir / "scores.csv").string();
  const std::string common = " --source " + fixture.model + " --data " + fixture.shard +
                             " --window 8 --seq-len 48 --sequences 4 --ratios 1:1,1:3";
  auto run = run_cli("prime-select --scorer attention-locality" + common + " --out " + csv);
  INFO(run.output);
  REQUIRE(run.exit_code == 0);
  REQUIRE(run.output.find("ratio 1:1: attention layers 1,3; predicted NLL increase") != std::string::npos);
  REQUIRE(run.output.find("cost: ") != std::string::npos);
  auto convert = run_cli("prime-convert --source " + fixture.model + " --layer GDN --ratio 1:1 --scores " + csv +
                         " --dry-run --json");
  INFO(convert.output);
  REQUIRE(convert.exit_code == 0);
  REQUIRE(convert.output.find("\"hybrid_override_pattern\": \"GDN-*-GDN-*\"") != std::string::npos);
  // --store: the scores go to the store's layer_scores, and --select-store reuses them.
  const std::string store = (fixture.dir / "runs.db").string();
  auto stored = run_cli("prime-select --scorer attention-locality" + common + " --store " + store);
  INFO(stored.output);
  REQUIRE(stored.exit_code == 0);
  auto reused = run_cli("prime-convert --source " + fixture.model + " --layer GDN --ratio 1:1 --select attention-locality"
                        " --select-store " + store + " --dry-run --json");
  INFO(reused.output);
  REQUIRE(reused.exit_code == 0);
  REQUIRE(reused.output.find("reusing the scores stored in") != std::string::npos);
  REQUIRE(reused.output.find("\"hybrid_override_pattern\": \"GDN-*-GDN-*\"") != std::string::npos);
  // An existing --out needs --force.
  REQUIRE(run_cli("prime-select --scorer attention-locality" + common + " --out " + csv).exit_code == 1);

  // --select runs the scorer, keeps its scores beside --out, and reuses them the next time.
  const std::string out = (fixture.dir / "hybrid").string();
  const std::string select = "prime-convert --source " + fixture.model + " --layer GDN --ratio 1:1 --select swa-sensitivity"
                             " --select-data " + fixture.shard + " --select-window 8 --select-seq-len 48 --dry-run --out " + out;
  auto first = run_cli(select);
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  REQUIRE(first.output.find("GDN-*-GDN-*") != std::string::npos);
  auto second = run_cli(select);
  REQUIRE(second.exit_code == 0);
  REQUIRE(second.output.find("reusing the scores") != std::string::npos);
  // A baseline needs no data and reproduces its placement.
  auto uniform = run_cli("prime-convert --source " + fixture.model + " --layer GDN --ratio 1:3 --select uniform --dry-run --json");
  INFO(uniform.output);
  REQUIRE(uniform.exit_code == 0);
  auto placed = run_cli("prime-convert --source " + fixture.model + " --layer GDN --ratio 1:3 --dry-run --json");
  const auto pattern_of = [](const std::string& text) {
    const std::string key = "\"hybrid_override_pattern\": \"";
    const size_t at = text.find(key) + key.size();
    return text.substr(at, text.find('"', at) - at);
  };
  REQUIRE(pattern_of(placed.output) == "GDN-GDN-*-GDN");
  REQUIRE(pattern_of(uniform.output) == pattern_of(placed.output));
}

TEST_CASE("prime-select CLI: bad input is a clear exit 1", "[select][cli]") {
  PlantedFixture fixture;
  const std::string base = "prime-select --source " + fixture.model + " --data " + fixture.shard;
  auto unknown = run_cli(base + " --scorer nope");
  REQUIRE(unknown.exit_code == 1);
  REQUIRE(unknown.output.find("unknown scorer 'nope' (known: swa-sensitivity") != std::string::npos);
  auto wide = run_cli(base + " --scorer swa-sensitivity --window 48 --seq-len 48");
  REQUIRE(wide.exit_code == 1);
  REQUIRE(wide.output.find("--window 48 must be smaller than --seq-len 48") != std::string::npos);
  {
    io::TokenShardHeader header;
    header.width = 2;
    io::TokenShardWriter writer(fixture.dir / "short.tok", header);
    writer.append(std::vector<uint32_t>{1, 2, 3, 4, 5});
    writer.finish();
  }
  auto short_shard = run_cli("prime-select --source " + fixture.model + " --data " + (fixture.dir / "short.tok").string() +
                             " --scorer attention-locality --window 8 --seq-len 48");
  REQUIRE(short_shard.exit_code == 1);
  REQUIRE(short_shard.output.find("holds 5 tokens, not more than the window (--window 8)") != std::string::npos);
  auto no_data = run_cli("prime-select --source " + fixture.model + " --scorer kl-restore");
  REQUIRE(no_data.exit_code == 1);
  REQUIRE(no_data.output.find("--data SHARD is required by scorer kl-restore") != std::string::npos);
  auto bad_ratio = run_cli(base + " --scorer uniform --ratios 1:3,x");
  REQUIRE(bad_ratio.exit_code == 1);
}

}  // namespace prime::test
