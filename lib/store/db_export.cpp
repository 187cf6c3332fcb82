// prime-db export: every trial as CSV (one row per trial, a column per param/value/attribute)
// or JSON (nested), for spreadsheets and pandas.
#include <nlohmann/json.hpp>

#include <cmath>
#include <iomanip>
#include <ostream>
#include <set>
#include <sstream>

#include "io/atomic_dir.h"
#include "store/db_commands.h"
#include "util/cli.h"
#include "util/error.h"

namespace prime::store {
namespace {

std::string csv_cell(const std::string& text) {
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

std::string real_text(double value) {
  std::ostringstream text;
  text << std::setprecision(17) << value;
  return text.str();
}

}  // namespace

void export_trials(Store& store, const std::optional<std::string>& study_name, const std::string& format,
                   std::ostream& out) {
  if (format != "csv" && format != "json") throw user_error("--format must be csv or json, not '", format, "'");
  std::map<int64_t, Study> studies;
  for (const Study& study : store.studies()) studies[study.id] = study;
  std::optional<int64_t> only;
  if (study_name) only = store.study(*study_name).id;
  const std::vector<Trial> trials = store.trials(only);

  if (format == "json") {
    nlohmann::json rows = nlohmann::json::array();
    for (const Trial& trial : trials) {
      const Study& study = studies.at(trial.study_id);
      nlohmann::json row = {{"trial", trial.id},     {"study", study.name},      {"number", trial.number},
                            {"state", trial_state_name(trial.state)}, {"worker", trial.worker},
                            {"started", trial.started}, {"finished", trial.finished}, {"retries", trial.retries}};
      row["pruned_step"] = trial.pruned_step ? nlohmann::json(*trial.pruned_step) : nlohmann::json();
      row["error"] = trial.error;
      row["params"] = nlohmann::json::object();
      for (const TrialParam& p : trial.params) row["params"][p.name] = p.value;
      row["values"] = nlohmann::json::object();
      for (size_t k = 0; k < study.objectives.size(); ++k)
        row["values"][study.objectives[k].name] =
            k < trial.values.size() && trial.values[k] ? nlohmann::json(*trial.values[k]) : nlohmann::json();
      row["attrs"] = trial.attrs;
      rows.push_back(row);
    }
    out << rows.dump(2) << "\n";
    return;
  }
  // CSV: the union of names over the exported trials, prefixed so they cannot collide.
  std::vector<std::string> params, values, attrs;
  std::set<std::string> seen;
  auto note = [&](std::vector<std::string>& list, const std::string& name) {
    if (seen.insert(name).second) list.push_back(name);
  };
  for (const Trial& trial : trials) {
    for (const TrialParam& p : trial.params) note(params, "param:" + p.name);
    for (const Objective& objective : studies.at(trial.study_id).objectives) note(values, "value:" + objective.name);
    for (const auto& [key, value] : trial.attrs) note(attrs, "attr:" + key);
  }
  std::vector<std::string> header{"trial", "study", "number", "state", "worker", "started", "finished", "retries",
                                  "pruned_step", "error"};
  for (const auto* list : {&params, &values, &attrs}) header.insert(header.end(), list->begin(), list->end());
  for (size_t column = 0; column < header.size(); ++column) out << (column ? "," : "") << csv_cell(header[column]);
  out << "\n";
  for (const Trial& trial : trials) {
    const Study& study = studies.at(trial.study_id);
    std::map<std::string, std::string> cells{
        {"trial", std::to_string(trial.id)},     {"study", study.name},
        {"number", std::to_string(trial.number)}, {"state", trial_state_name(trial.state)},
        {"worker", trial.worker},                {"started", trial.started > 0 ? real_text(trial.started) : ""},
        {"finished", trial.finished > 0 ? real_text(trial.finished) : ""},
        {"retries", std::to_string(trial.retries)},
        {"pruned_step", trial.pruned_step ? std::to_string(*trial.pruned_step) : ""},
        {"error", trial.error}};
    for (const TrialParam& p : trial.params) cells["param:" + p.name] = p.value;
    for (size_t k = 0; k < study.objectives.size(); ++k)
      if (k < trial.values.size() && trial.values[k]) cells["value:" + study.objectives[k].name] = real_text(*trial.values[k]);
    for (const auto& [key, value] : trial.attrs) cells["attr:" + key] = value;
    for (size_t column = 0; column < header.size(); ++column) {
      const auto it = cells.find(header[column]);
      out << (column ? "," : "") << (it == cells.end() ? "" : csv_cell(it->second));
    }
    out << "\n";
  }
}

void export_trials(Store& store, const std::optional<std::string>& study, const std::string& format,
                   const std::string& out, bool force) {
  check_output_file(out, "--out", force);  // before the store is read
  std::ostringstream text;
  export_trials(store, study, format, text);
  io::write_file_atomically(out, text.str(), force, "--out");
}

}  // namespace prime::store
