// prime-db: query an experiment store (SQLite file or postgresql://...): studies, trials, one
// trial, Pareto fronts, hypervolume, exports, gnuplot plots and a self-contained HTML report.
#include <CLI/CLI.hpp>

#include <iostream>
#include <sstream>

#include "store/db_commands.h"
#include "util/cli.h"
#include "util/cli_checks.h"
#include "util/error.h"

namespace {

std::vector<double> parse_reference(const std::string& text) {
  std::vector<double> values;
  std::stringstream items(text);
  for (std::string item; std::getline(items, item, ',');) {
    try {
      size_t used = 0;
      values.push_back(std::stod(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw prime::user_error("--reference: '", item, "' is not a number (give one per objective, comma-separated)");
    }
  }
  return values;
}

// --x val_ppl:min, or --x val_ppl taking the study's own direction for that objective.
prime::store::Objective axis_objective(prime::store::Store& store, const std::string& study, const std::string& text,
                                       const std::string& flag) {
  if (text.find(':') != std::string::npos) return prime::store::parse_objective(text);
  for (const auto& objective : store.study(study).objectives)
    if (objective.name == text) return objective;
  throw prime::user_error(flag, " ", text, ": not an objective of study '", study, "'; give its direction as ", text,
                          ":min or ", text, ":max");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"prime-db: query an experiment store (studies, trials, Pareto fronts, plots, reports)"};
  app.require_subcommand(1);
  std::string store_url;
  app.add_option("--store", store_url, "the store: an SQLite file path or postgresql://user[:pw]@host[:port]/db")
      ->required()->group("Store");

  std::string study, state_name, objectives_text, reference_text, format = "csv", out, x_axis, y_axis;
  std::vector<std::string> metrics;
  int64_t trial_id = 0, bench_trials = 30000;
  int bench_metrics = 10, bench_steps = 100;
  bool feasible_only = false, force = false;

  app.add_subcommand("studies", "list the studies with their objectives and trial counts");
  auto* trials = app.add_subcommand("trials", "list trials (params, objective values, state)");
  trials->add_option("--study", study, "only this study (adds its objective columns)")->group("Query");
  trials->add_option("--state", state_name, "only trials in this state: WAITING RUNNING COMPLETE PRUNED FAIL")
      ->group("Query");
  auto* show = app.add_subcommand("show", "one trial: params, values, attributes, curve summaries, artifacts");
  show->add_option("trial", trial_id, "trial id (first column of `trials`)")->required();
  auto* pareto = app.add_subcommand("pareto", "the non-dominated complete trials of a study");
  pareto->add_option("--study", study, "study name")->required()->group("Query");
  pareto->add_option("--objectives", objectives_text, "2 or 3 of NAME:min|max, comma-separated (objectives, numeric "
                                                      "attributes or params)")
      ->required()->group("Query");
  pareto->add_flag("--feasible-only", feasible_only, "leave infeasible trials out before computing the front")
      ->group("Query");
  auto* volume = app.add_subcommand("hypervolume", "hypervolume of a study's front, and its history over trials");
  volume->add_option("--study", study, "study name")->required()->group("Query");
  volume->add_option("--objectives", objectives_text, "NAME:min|max,... (default: the study's objectives)")
      ->group("Query");
  volume->add_option("--reference", reference_text, "reference point, one value per objective, comma-separated")
      ->required()->group("Query");
  volume->add_flag("--feasible-only", feasible_only, "count feasible trials only")->group("Query");
  auto* exporter = app.add_subcommand("export", "every trial as CSV or JSON on stdout (or --out)");
  exporter->add_option("--format", format, "csv or json")->check(CLI::IsMember({"csv", "json"}))->group("Output");
  exporter->add_option("--study", study, "only this study")->group("Query");
  exporter->add_option("--out", out, "write here instead of stdout")->group("Output");
  exporter->add_flag("--force", force, "replace an existing --out")->group("Output");
  auto* plot = app.add_subcommand("plot", "Pareto scatter (gnuplot) of two objectives; .dat and .gp written beside it");
  plot->add_option("--study", study, "study name")->required()->group("Query");
  plot->add_option("--x", x_axis, "x objective: NAME or NAME:min|max")->required()->group("Query");
  plot->add_option("--y", y_axis, "y objective: NAME or NAME:min|max")->required()->group("Query");
  plot->add_option("--out", out, "image: .png or .svg")->required()->group("Output");
  plot->add_flag("--feasible-only", feasible_only, "leave infeasible trials out")->group("Query");
  plot->add_flag("--force", force, "replace an existing --out and its .dat and .gp")->group("Output");
  auto* curves = app.add_subcommand("curves", "a trial's training curves (gnuplot); .dat and .gp written beside it");
  curves->add_option("--trial", trial_id, "trial id")->required()->group("Query");
  curves->add_option("--metric", metrics, "metric name (repeatable)")->required()->group("Query");
  curves->add_option("--out", out, "image: .png or .svg")->required()->group("Output");
  curves->add_flag("--force", force, "replace an existing --out and its .dat and .gp")->group("Output");
  auto* report = app.add_subcommand("report", "one self-contained HTML page: Pareto plots, sortable table, curves");
  report->add_option("--study", study, "study name")->required()->group("Query");
  report->add_option("--out", out, "report.html")->required()->group("Output");
  report->add_flag("--force", force, "replace an existing --out")->group("Output");
  auto* bench = app.add_subcommand("bench", "fill the store with study 'bench' (if absent), time queries and logging");
  bench->add_option("--trials", bench_trials, "trials to generate (default 30000)")
      ->check(prime::positive_number())->group("Benchmark");
  bench->add_option("--metrics", bench_metrics, "metrics per trial (default 10)")
      ->check(prime::positive_number())->group("Benchmark");
  bench->add_option("--steps", bench_steps, "steps per metric (default 100)")
      ->check(prime::positive_number())->group("Benchmark");

  if (auto exit_code = prime::parse_command_line(app, "prime-db", argc, argv)) return *exit_code;
  return prime::run_command("prime-db", [&] {
    using prime::store::OpenMode;
    using prime::store::Store;
    const bool writes = app.got_subcommand("bench");
    auto store = Store::open(store_url, writes ? OpenMode::ReadWrite : OpenMode::ReadOnly);
    const std::optional<std::string> only_study = study.empty() ? std::nullopt : std::optional<std::string>(study);
    if (app.got_subcommand("studies")) {
      prime::store::print_studies(*store, std::cout);
    } else if (app.got_subcommand("trials")) {
      std::optional<prime::store::TrialState> state;
      if (!state_name.empty()) state = prime::store::parse_trial_state(state_name);
      prime::store::print_trials(*store, only_study, state, std::cout);
    } else if (app.got_subcommand("show")) {
      prime::store::print_trial(*store, trial_id, std::cout);
    } else if (app.got_subcommand("pareto")) {
      const auto objectives = prime::store::parse_objectives(objectives_text);
      if (objectives.size() < 2 || objectives.size() > 3)
        throw prime::user_error("--objectives: give 2 or 3 objectives, not ", objectives.size());
      prime::store::print_pareto(prime::store::pareto_table(*store, study, objectives, feasible_only), std::cout);
    } else if (app.got_subcommand("hypervolume")) {
      const auto objectives = objectives_text.empty() ? store->study(study).objectives
                                                      : prime::store::parse_objectives(objectives_text);
      const auto table = prime::store::pareto_table(*store, study, objectives, feasible_only);
      prime::store::print_hypervolume(table, parse_reference(reference_text), std::cout);
    } else if (app.got_subcommand("export")) {
      if (out.empty())
        prime::store::export_trials(*store, only_study, format, std::cout);
      else
        prime::store::export_trials(*store, only_study, format, out, force);
    } else if (app.got_subcommand("plot")) {
      prime::store::plot_pareto(*store, study, axis_objective(*store, study, x_axis, "--x"),
                                axis_objective(*store, study, y_axis, "--y"), out, feasible_only, force);
      std::cout << "wrote " << out << " (data and gnuplot script beside it)\n";
    } else if (app.got_subcommand("curves")) {
      prime::store::plot_curves(*store, trial_id, metrics, out, force);
      std::cout << "wrote " << out << " (data and gnuplot script beside it)\n";
    } else if (app.got_subcommand("report")) {
      prime::store::write_report(*store, study, out, force);
      std::cout << "wrote " << out << "\n";
    } else if (app.got_subcommand("bench")) {
      prime::store::run_store_bench(*store, bench_trials, bench_metrics, bench_steps, std::cout);
    }
  });
}
