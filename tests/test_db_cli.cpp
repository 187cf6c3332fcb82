// prime-db on a small study: tables, Pareto front, hypervolume, exports, plots and the report;
// bad input exits 1 with a clear message.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "store/store.h"
#include "test_data_util.h"
#include "test_helpers.h"
#include "test_store_util.h"

using namespace prime::store;
using prime::test::run_cli;
using prime::test::StoreScratch;

namespace {

// Six layer/ratio trials with (val_ppl, decode_tok_s): the front is GKA 1:1, GDN 1:3 (infeasible),
// M2 1:7; GKA 1:3 lacks a value; one FAIL and one PRUNED trial are on no front.
std::string make_study(const StoreScratch& scratch) {
  const std::string path = scratch.file("runs.db");
  auto store = Store::open(path);
  const Study study = store->create_study({"demo", {{"val_ppl", Direction::Minimize}, {"decode_tok_s", Direction::Maximize}},
                                           "{}", {"state_bytes <= 64MiB"}});
  struct Row {
    const char* layer;
    const char* ratio;
    double ppl, tok_s;
    bool infeasible;
    TrialState state;
  };
  const Row rows[] = {{"GKA", "1:1", 10, 500, false, TrialState::Complete}, {"GDN", "1:3", 12, 900, true, TrialState::Complete},
                      {"M2", "1:7", 15, 1500, false, TrialState::Complete}, {"GDN", "1:1", 13, 600, false, TrialState::Complete},
                      {"GKA", "1:3", NAN, 700, false, TrialState::Complete}, {"M2", "1:1", 11, 400, false, TrialState::Fail},
                      {"GKA", "1:7", 9, 2000, false, TrialState::Pruned}};
  for (const Row& row : rows) {
    const int64_t id = store->enqueue_trial(study.id, {{"layer", row.layer, "categorical"}, {"ratio", row.ratio, "categorical"}});
    store->claim_trial(study.id, "host:1");
    // Two training stages, the second from step 150 (prime-search's stage marks).
    store->log_metrics(id, {{"stage", 1, 1.0}, {"loss", 1, 6.0}, {"loss", 100, 4.0}, {"stage", 150, 2.0},
                            {"loss", 200, 3.2}, {"val_loss", 200, 3.4}});
    TrialResult result{row.state, {{"decode_tok_s", row.tok_s}}, {{"state_bytes", "1000"}}, std::nullopt, ""};
    if (!std::isnan(row.ppl)) result.values["val_ppl"] = row.ppl;
    if (row.infeasible) result.attrs["infeasible"] = "1";
    if (row.state == TrialState::Fail) result.error = "out of memory";
    if (row.state == TrialState::Pruned) result.pruned_step = 100;
    store->finish_trial(id, result);
  }
  return path;
}


}  // namespace

TEST_CASE("prime-db: studies, trials, show, pareto, hypervolume and export", "[store][db][cli]") {
  StoreScratch scratch("db_cli");
  const std::string store = make_study(scratch);
  const std::string db = "prime-db --store " + store + " ";

  auto studies = run_cli(db + "studies");
  CHECK(studies.exit_code == 0);
  CHECK_THAT(studies.output, Catch::Contains("demo") && Catch::Contains("val_ppl:min,decode_tok_s:max"));

  auto trials = run_cli(db + "trials --study demo --state complete");
  CHECK(trials.exit_code == 0);
  CHECK_THAT(trials.output, Catch::Contains("layer=GDN ratio=1:3") && Catch::Contains("infeasible") &&
                                !Catch::Contains("out of memory"));

  auto show = run_cli(db + "show 6");
  CHECK(show.exit_code == 0);
  CHECK_THAT(show.output, Catch::Contains("FAIL") && Catch::Contains("out of memory") && Catch::Contains("val_loss"));

  auto pareto = run_cli(db + "pareto --study demo --objectives val_ppl:min,decode_tok_s:max");
  INFO(pareto.output);
  CHECK(pareto.exit_code == 0);
  CHECK_THAT(pareto.output, Catch::Contains("GKA 1:1") && Catch::Contains("GDN 1:3") && Catch::Contains("M2 1:7") &&
                                !Catch::Contains("GDN 1:1") && !Catch::Contains("GKA 1:7"));
  CHECK_THAT(pareto.output, Catch::Contains("3 of 5 complete trials on the front; 1 lack a value"));
  auto feasible = run_cli(db + "pareto --study demo --objectives val_ppl:min,decode_tok_s:max --feasible-only");
  CHECK_THAT(feasible.output, !Catch::Contains("GDN 1:3") && Catch::Contains("GDN 1:1"));
  CHECK(run_cli(db + "pareto --study demo --objectives val_ppl:min,decode_tok_s:max,state_bytes:min").exit_code == 0);

  // Front (10,500), (12,900), (15,1500) against reference (20, 0): 5000 + 3200 + 3000.
  auto volume = run_cli(db + "hypervolume --study demo --reference 20,0");
  CHECK(volume.exit_code == 0);
  CHECK_THAT(volume.output, Catch::Contains("hypervolume 11200") && Catch::Contains("history"));

  auto csv = run_cli(db + "export --format csv --study demo");
  CHECK(csv.exit_code == 0);
  CHECK_THAT(csv.output, Catch::StartsWith("trial,study,number,state") && Catch::Contains("param:layer") &&
                             Catch::Contains("value:val_ppl") && Catch::Contains("attr:state_bytes"));
  CHECK(run_cli(db + "export --format json --out " + scratch.file("all.json")).exit_code == 0);
  CHECK_THAT(prime::test::read_text(scratch.file("all.json")), Catch::Contains("\"decode_tok_s\": 1500.0"));
}

TEST_CASE("prime-db: plot, curves and report write their files", "[store][db][cli]") {
  StoreScratch scratch("db_plot");
  const std::string store = make_study(scratch);
  const std::string db = "prime-db --store " + store + " ";
  auto plot = run_cli(db + "plot --study demo --x val_ppl --y decode_tok_s --out " + scratch.file("pareto.png"));
  INFO(plot.output);
  CHECK(plot.exit_code == 0);
  CHECK(std::filesystem::file_size(scratch.file("pareto.png")) > 1000);
  CHECK_THAT(prime::test::read_text(scratch.file("pareto.gp")), Catch::Contains("val_ppl (perplexity)"));
  CHECK_THAT(prime::test::read_text(scratch.file("pareto.dat")), Catch::Contains("\"M2 1:7\" 2"));
  // The same stem in svg: its .dat and .gp would replace the png's, so that takes --force.
  CHECK(run_cli(db + "plot --study demo --x val_ppl --y decode_tok_s --out " + scratch.file("pareto.svg")).exit_code == 1);
  CHECK(run_cli(db + "plot --study demo --x val_ppl --y decode_tok_s --force --out " + scratch.file("pareto.svg"))
            .exit_code == 0);
  CHECK(run_cli(db + "curves --trial 1 --metric loss --metric val_loss --out " + scratch.file("curves.png")).exit_code == 0);
  CHECK(std::filesystem::file_size(scratch.file("curves.png")) > 1000);
  // The loss is a line per stage; val_loss, within one stage, one line under its own name.
  const std::string curves = prime::test::read_text(scratch.file("curves.dat"));
  CHECK_THAT(curves, Catch::Contains("\"loss (stage 1)\" 1 6") && Catch::Contains("\"loss (stage 1)\" 100 4") &&
                         Catch::Contains("\"loss (stage 2)\" 200 3.2") && Catch::Contains("\"val_loss\" 200 3.4"));
  CHECK_THAT(prime::test::read_text(scratch.file("curves.gp")), Catch::Contains("title \"loss (stage 2)\""));
  auto report = run_cli(db + "report --study demo --out " + scratch.file("report.html"));
  CHECK(report.exit_code == 0);
  const std::string page = prime::test::read_text(scratch.file("report.html"));
  CHECK_THAT(page, Catch::Contains("<svg") && Catch::Contains("<script>") && Catch::Contains("M2 1:7") &&
                       !Catch::Contains("http://cdn") && !Catch::Contains("src="));
  CHECK_THAT(page, Catch::Contains(">loss (stage 2) (min") && !Catch::Contains(">stage (min"));
  // No staging file is left beside the outputs.
  for (const auto& entry : std::filesystem::directory_iterator(scratch.path()))
    CHECK(entry.path().filename().string().find(".tmp-") == std::string::npos);
}

TEST_CASE("prime-db: existing outputs are replaced only with --force", "[store][db][cli]") {
  StoreScratch scratch("db_force");
  const std::string store = make_study(scratch);
  const std::string db = "prime-db --store " + store + " ";
  const std::string plot = db + "plot --study demo --x val_ppl --y decode_tok_s --out " + scratch.file("p.svg");
  REQUIRE(run_cli(plot).exit_code == 0);
  const std::string drawn = prime::test::read_text(scratch.file("p.svg"));
  // Each of the three files alone blocks the plot, which then writes none of them.
  for (const char* existing : {"p.svg", "p.dat", "p.gp"}) {
    for (const char* name : {"p.svg", "p.dat", "p.gp"}) std::filesystem::remove(scratch.file(name));
    prime::test::write_text(scratch.file(existing), "mine");
    auto refused = run_cli(plot);
    INFO(existing << ": " << refused.output);
    CHECK(refused.exit_code == 1);
    CHECK_THAT(refused.output, Catch::Contains("already exists") && Catch::Contains("--force"));
    CHECK(prime::test::read_text(scratch.file(existing)) == "mine");
    for (const auto& entry : std::filesystem::directory_iterator(scratch.path())) {
      const std::string name = entry.path().filename().string();
      CHECK((name == existing || name.rfind("runs.db", 0) == 0));
    }
  }
  auto forced = run_cli(plot + " --force");
  CHECK(forced.exit_code == 0);
  CHECK(prime::test::read_text(scratch.file("p.svg")) == drawn);

  const std::string curves = db + "curves --trial 1 --metric loss --out " + scratch.file("c.png");
  REQUIRE(run_cli(curves).exit_code == 0);
  CHECK(run_cli(curves).exit_code == 1);
  CHECK(run_cli(curves + " --force").exit_code == 0);

  const std::string report = db + "report --study demo --out " + scratch.file("r.html");
  REQUIRE(run_cli(report).exit_code == 0);
  prime::test::write_text(scratch.file("r.html"), "mine");
  CHECK(run_cli(report).exit_code == 1);
  CHECK(prime::test::read_text(scratch.file("r.html")) == "mine");
  CHECK(run_cli(report + " --force").exit_code == 0);
  CHECK_THAT(prime::test::read_text(scratch.file("r.html")), Catch::Contains("<svg"));

  // Without gnuplot: the data and the script, and no older image that they do not draw; the
  // report writes nothing.
  {
    const std::string path = std::getenv("PATH");
    std::filesystem::create_directory(scratch.file("empty-bin"));
    ::setenv("PATH", scratch.file("empty-bin").c_str(), 1);
    auto bare = run_cli(db + "plot --study demo --x val_ppl --y state_bytes:min --force --out " + scratch.file("p.svg"));
    auto bare_report = run_cli(db + "report --study demo --out " + scratch.file("r2.html"));
    ::setenv("PATH", path.c_str(), 1);
    INFO(bare.output);
    CHECK(bare.exit_code == 1);
    CHECK_THAT(bare.output, Catch::Contains("gnuplot is not installed") && Catch::Contains("`gnuplot p.gp`"));
    CHECK_FALSE(std::filesystem::exists(scratch.file("p.svg")));
    CHECK_THAT(prime::test::read_text(scratch.file("p.gp")), Catch::Contains("state_bytes"));
    CHECK(bare_report.exit_code == 1);
    CHECK_THAT(bare_report.output, Catch::Contains("gnuplot is not installed"));
    CHECK_FALSE(std::filesystem::exists(scratch.file("r2.html")));
  }

  const std::string exported = db + "export --format csv --out " + scratch.file("t.csv");
  REQUIRE(run_cli(exported).exit_code == 0);
  prime::test::write_text(scratch.file("t.csv"), "mine");
  auto refused = run_cli(exported);
  CHECK(refused.exit_code == 1);
  CHECK_THAT(refused.output, Catch::Contains("--out") && Catch::Contains("already exists"));
  CHECK(prime::test::read_text(scratch.file("t.csv")) == "mine");
  CHECK(run_cli(exported + " --force").exit_code == 0);
  CHECK_THAT(prime::test::read_text(scratch.file("t.csv")), Catch::StartsWith("trial,study"));
}

TEST_CASE("prime-db: bad input exits 1 with a clear message and writes nothing", "[store][db][cli]") {
  StoreScratch scratch("db_bad");
  const std::string store = make_study(scratch);
  const std::string db = "prime-db --store " + store + " ";
  auto missing = run_cli("prime-db --store " + scratch.file("none.db") + " studies");
  CHECK(missing.exit_code == 1);
  CHECK_THAT(missing.output, Catch::Contains("does not exist"));
  CHECK_FALSE(std::filesystem::exists(scratch.file("none.db")));
  CHECK(run_cli("prime-db --store " + scratch.path().string() + " studies").exit_code == 1);
  auto unknown = run_cli(db + "pareto --study demo --objectives val_ppl:min,nope:max");
  CHECK(unknown.exit_code == 1);
  CHECK_THAT(unknown.output, Catch::Contains("'nope' as a number") &&
                                Catch::Contains("(they have: val_ppl, decode_tok_s, state_bytes)"));
  // A categorical param is no number: named as such, not listed.
  auto categorical = run_cli(db + "pareto --study demo --objectives layer:min,decode_tok_s:max");
  CHECK(categorical.exit_code == 1);
  CHECK_THAT(categorical.output, Catch::Contains("'layer' as a number"));
  CHECK(run_cli(db + "pareto --study demo --objectives val_ppl:min").exit_code == 1);
  CHECK(run_cli(db + "pareto --study other --objectives a:min,b:max").exit_code == 1);
  CHECK(run_cli(db + "show 999").exit_code == 1);
  CHECK(run_cli(db + "hypervolume --study demo --reference 20,x").exit_code == 1);
  CHECK(run_cli(db + "plot --study demo --x val_ppl --y decode_tok_s --out " + scratch.file("p.jpg")).exit_code == 1);
  CHECK(run_cli(db + "curves --trial 1 --metric nope --out " + scratch.file("c.png")).exit_code == 1);
  CHECK(run_cli(db + "report --study demo --out " + scratch.file("no/r.html")).exit_code == 1);
  CHECK(run_cli(db + "export --out " + scratch.path().string()).exit_code == 1);
  for (const char* flag : {"--trials -1", "--metrics 0", "--steps -3"}) {
    auto bench = run_cli(db + "bench " + flag);
    CHECK(bench.exit_code == 1);
    CHECK_THAT(bench.output, Catch::Contains("must be a finite number > 0"));
  }
  // Nothing but the store (and SQLite's side files) was written.
  for (const auto& entry : std::filesystem::directory_iterator(scratch.path()))
    CHECK_THAT(entry.path().filename().string(), Catch::StartsWith("runs.db"));
  auto pg = run_cli("prime-db --store 'postgresql://u@127.0.0.1:1/x?connect_timeout=2' studies");
  CHECK(pg.exit_code == 1);
  CHECK_THAT(pg.output, Catch::Contains("cannot connect"));
}
