// What prime-db prints and writes, kept in the library so tests reach it: study and trial
// tables, Pareto fronts and hypervolume of a study, exports, gnuplot plots and the HTML report.
#pragma once

#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "store/store.h"

namespace prime::store {

// A number as prime-db and prime-search print it: six significant digits; NaN as `nan_text`.
std::string number_text(double value, const std::string& nan_text = "-");

// The COMPLETE trials of a study placed in objective space (NaN = the trial lacks that value).
struct ParetoRow {
  Trial trial;
  std::vector<double> point;
  bool on_front = false;
  int rank = -1;  // non-dominated sorting rank (0 = front) when asked for, else -1
  bool feasible = true;
};
struct ParetoTable {
  Study study;
  std::vector<Objective> objectives;
  std::vector<ParetoRow> rows;  // by trial number
  size_t missing = 0;           // complete trials without every value
  size_t infeasible = 0;
};
// UserError when an objective is something no complete trial has (naming what they have).
// feasible_only: infeasible trials are left out before the front is computed.
// with_ranks: also every trial's rank (peeling fronts: quadratic, so only when shown).
ParetoTable pareto_table(Store& store, const std::string& study_name, const std::vector<Objective>& objectives,
                         bool feasible_only, bool with_ranks = false);

// "GKA 1:3" from the layer and ratio params (else "#number").
std::string trial_label(const Trial& trial);
// Axis name with units for an objective or metric name: "val_ppl (perplexity)".
std::string axis_title(const std::string& name);

void print_studies(Store& store, std::ostream& out);
void print_trials(Store& store, const std::optional<std::string>& study, const std::optional<TrialState>& state,
                  std::ostream& out);
void print_trial(Store& store, int64_t trial_id, std::ostream& out);
void print_pareto(const ParetoTable& table, std::ostream& out);
// Hypervolume of the front and after each complete trial (by number).
void print_hypervolume(const ParetoTable& table, const std::vector<double>& reference, std::ostream& out);
// Every trial (of one study or all): csv or json.
void export_trials(Store& store, const std::optional<std::string>& study, const std::string& format, std::ostream& out);

// Files: each appears complete or not at all, and an existing one is replaced only with force
// (UserError naming --out otherwise).
// export_trials to the file `out`.
void export_trials(Store& store, const std::optional<std::string>& study, const std::string& format,
                   const std::string& out, bool force);
// gnuplot: writes OUT (png or svg by extension) plus OUT's stem + ".dat" and ".gp" beside it.
void plot_pareto(Store& store, const std::string& study, const Objective& x, const Objective& y,
                 const std::string& out, bool feasible_only, bool force);
void plot_curves(Store& store, int64_t trial_id, const std::vector<std::string>& metrics, const std::string& out,
                 bool force);
// One self-contained HTML page: Pareto plots (inline SVG), a sortable table, each trial's curves.
void write_report(Store& store, const std::string& study, const std::string& out, bool force);

// Fills the store with study "bench" (trials x metrics x steps) unless it exists, then prints
// the time of trials / pareto / curves / intermediate-value queries and of metric logging.
void run_store_bench(Store& store, int64_t trials, int metrics, int steps, std::ostream& out);

}  // namespace prime::store
