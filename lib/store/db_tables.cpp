// prime-db's tables: studies, trials, one trial, Pareto fronts and hypervolume.
#include <algorithm>
#include <cmath>
#include <iomanip>
#include <ostream>
#include <set>
#include <sstream>

#include "store/db_commands.h"
#include "store/pareto.h"
#include "util/error.h"

namespace prime::store {
namespace {

// Columns padded to their widest cell; numbers are right-aligned.
class TextTable {
 public:
  explicit TextTable(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void print(std::ostream& out) const {
    std::vector<size_t> width(rows_[0].size(), 0);
    for (const auto& row : rows_)
      for (size_t column = 0; column < row.size() && column < width.size(); ++column)
        width[column] = std::max(width[column], row[column].size());
    for (const auto& row : rows_) {
      std::string line;
      for (size_t column = 0; column < row.size() && column < width.size(); ++column) {
        const bool numeric = !row[column].empty() && (std::isdigit(static_cast<unsigned char>(row[column][0])) ||
                                                      row[column][0] == '-');
        const std::string pad(width[column] - row[column].size(), ' ');
        line += (column ? "  " : "") + (numeric ? pad + row[column] : row[column] + pad);
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out << line << "\n";
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};


std::string time_text(double seconds) {
  if (seconds <= 0) return "-";
  const std::time_t time = static_cast<std::time_t>(seconds);
  std::tm utc{};
  gmtime_r(&time, &utc);
  std::ostringstream text;
  text << std::put_time(&utc, "%Y-%m-%d %H:%M:%S");
  return text.str();
}

std::string params_text(const Trial& trial) {
  std::string text;
  for (const TrialParam& p : trial.params) text += (text.empty() ? "" : " ") + p.name + "=" + p.value;
  return text;
}

std::vector<Direction> directions_of(const std::vector<Objective>& objectives) {
  std::vector<Direction> directions;
  for (const Objective& objective : objectives) directions.push_back(objective.direction);
  return directions;
}

}  // namespace

std::string number_text(double value, const std::string& nan_text) {
  if (std::isnan(value)) return nan_text;
  std::ostringstream text;
  text << std::setprecision(6) << value;
  return text.str();
}

std::string trial_label(const Trial& trial) {
  const TrialParam* layer = trial.param("layer");
  const TrialParam* ratio = trial.param("ratio");
  if (!layer && !ratio) return "#" + std::to_string(trial.number);
  return (layer ? layer->value : "") + (layer && ratio ? " " : "") + (ratio ? ratio->value : "");
}

std::string axis_title(const std::string& name) {
  struct Unit {
    const char* suffix;
    const char* unit;
  };
  static const Unit units[] = {{"ppl", "perplexity"},      {"tok_s", "tokens/s"}, {"tokens_per_s", "tokens/s"},
                               {"bytes", "bytes"},          {"val_loss", "nats/token"}, {"seconds", "s"},
                               {"_s", "s"},
                               {"recall", "fraction"},  {"accuracy", "fraction"}, {"params", "count"}};
  for (const Unit& unit : units) {
    const std::string suffix = unit.suffix;
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return name + " (" + unit.unit + ")";
  }
  return name;
}

ParetoTable pareto_table(Store& store, const std::string& study_name, const std::vector<Objective>& objectives,
                         bool feasible_only, bool with_ranks) {
  if (objectives.empty()) throw user_error("give at least one objective");
  ParetoTable table;
  table.study = store.study(study_name);
  table.objectives = objectives;
  std::vector<size_t> seen(objectives.size(), 0);
  for (Trial& trial : store.trials(table.study.id, TrialState::Complete)) {
    ParetoRow row;
    row.feasible = !trial.infeasible();
    for (size_t k = 0; k < objectives.size(); ++k) {
      const auto value = trial_number(trial, table.study, objectives[k].name);
      row.point.push_back(value ? *value : std::nan(""));
      if (value) ++seen[k];
    }
    row.trial = std::move(trial);
    if (!row.feasible) ++table.infeasible;
    if (feasible_only && !row.feasible) continue;
    if (std::any_of(row.point.begin(), row.point.end(), [](double v) { return std::isnan(v); })) ++table.missing;
    table.rows.push_back(std::move(row));
  }
  for (size_t k = 0; k < objectives.size(); ++k)
    if (seen[k] == 0 && !table.rows.empty()) {
      // What a trial does have as a number: its objectives, numeric attributes and params, once each.
      const Trial& first = table.rows[0].trial;
      std::vector<std::string> names;
      for (const Objective& objective : table.study.objectives) names.push_back(objective.name);
      for (const auto& [key, value] : first.attrs) names.push_back(key);
      for (const TrialParam& param : first.params) names.push_back(param.name);
      std::string known;
      std::set<std::string> listed;
      for (const std::string& name : names) {
        const auto value = trial_number(first, table.study, name);
        if (value && !std::isnan(*value) && listed.insert(name).second) known += (known.empty() ? "" : ", ") + name;
      }
      throw user_error("no complete trial of study '", study_name, "' has '", objectives[k].name,
                       "' as a number (they have: ", known, ")");
    }
  std::vector<std::vector<double>> points;
  for (const ParetoRow& row : table.rows) points.push_back(row.point);
  for (size_t index : pareto_front(points, directions_of(objectives))) table.rows[index].on_front = true;
  if (with_ranks) {
    const auto ranks = pareto_ranks(points, directions_of(objectives));
    for (size_t i = 0; i < table.rows.size(); ++i) table.rows[i].rank = ranks[i];
  }
  return table;
}

void print_studies(Store& store, std::ostream& out) {
  TextTable table({"id", "study", "objectives", "trials", "complete", "pruned", "fail", "running", "waiting", "created"});
  for (const Study& study : store.studies()) {
    std::string objectives;
    int64_t total = 0;
    for (const auto& [state, count] : study.trial_counts) total += count;
    for (const Objective& objective : study.objectives) objectives += (objectives.empty() ? "" : ",") + objective_text(objective);
    auto count = [&](const char* state) {
      const auto it = study.trial_counts.find(state);
      return std::to_string(it == study.trial_counts.end() ? 0 : it->second);
    };
    table.add({std::to_string(study.id), study.name, objectives, std::to_string(total), count("COMPLETE"), count("PRUNED"),
               count("FAIL"), count("RUNNING"), count("WAITING"), time_text(study.created)});
  }
  table.print(out);
}

void print_trials(Store& store, const std::optional<std::string>& study_name, const std::optional<TrialState>& state,
                  std::ostream& out) {
  std::optional<Study> only;
  if (study_name) only = store.study(*study_name);
  std::vector<std::string> header{"trial", "study", "number", "state", "params"};
  if (only)
    for (const Objective& objective : only->objectives) header.push_back(objective.name);
  header.insert(header.end(), {"worker", "note"});
  TextTable table(header);
  std::map<int64_t, std::string> study_names;
  for (const Study& study : store.studies()) study_names[study.id] = study.name;
  for (const Trial& trial : store.trials(only ? std::optional<int64_t>(only->id) : std::nullopt, state)) {
    std::vector<std::string> row{std::to_string(trial.id), study_names[trial.study_id], std::to_string(trial.number),
                                 trial_state_name(trial.state), params_text(trial)};
    if (only)
      for (const auto& value : trial.values) row.push_back(value ? number_text(*value) : "-");
    std::string note = trial.error;
    if (trial.pruned_step) note = "pruned at step " + std::to_string(*trial.pruned_step);
    if (trial.infeasible()) note += std::string(note.empty() ? "" : "; ") + "infeasible";
    if (trial.retry_of) note += std::string(note.empty() ? "" : "; ") + "retry of " + std::to_string(*trial.retry_of);
    row.insert(row.end(), {trial.worker.empty() ? "-" : trial.worker, note});
    table.add(row);
  }
  table.print(out);
}

void print_trial(Store& store, int64_t trial_id, std::ostream& out) {
  const TrialDetail detail = store.trial_detail(trial_id);
  const Trial& trial = detail.trial;
  out << "trial " << trial.id << " (study " << detail.study.name << ", number " << trial.number << "): "
      << trial_state_name(trial.state) << "\n";
  out << "  worker " << (trial.worker.empty() ? "-" : trial.worker) << ", started " << time_text(trial.started)
      << ", finished " << time_text(trial.finished) << ", heartbeat " << time_text(trial.heartbeat) << "\n";
  if (trial.pruned_step) out << "  pruned at step " << *trial.pruned_step << "\n";
  if (!trial.error.empty()) out << "  error: " << trial.error << "\n";
  if (trial.retry_of) out << "  retry " << trial.retries << " of trial " << *trial.retry_of << "\n";
  out << "params:\n";
  for (const TrialParam& p : trial.params) out << "  " << p.name << " = " << p.value << " (" << p.kind << ")\n";
  out << "values:\n";
  for (size_t k = 0; k < detail.study.objectives.size(); ++k)
    out << "  " << objective_text(detail.study.objectives[k]) << " = "
        << (k < trial.values.size() && trial.values[k] ? number_text(*trial.values[k]) : "-") << "\n";
  if (!trial.attrs.empty()) out << "attributes:\n";
  for (const auto& [key, value] : trial.attrs) out << "  " << key << " = " << value << "\n";
  if (!detail.metrics.empty()) {
    out << "curves:\n";
    TextTable table({"  metric", "points", "first_step", "last_step", "last", "min", "max"});
    for (const MetricSummary& m : detail.metrics)
      table.add({"  " + m.name, std::to_string(m.count), std::to_string(m.first_step), std::to_string(m.last_step),
                 number_text(m.last), number_text(m.min), number_text(m.max)});
    table.print(out);
  }
  if (!detail.artifacts.empty()) out << "artifacts:\n";
  for (const Artifact& a : detail.artifacts)
    out << "  " << a.kind << "  " << a.path << (a.sha256.empty() ? "" : "  sha256:" + a.sha256) << "\n";
}

void print_pareto(const ParetoTable& table, std::ostream& out) {
  std::vector<std::string> header{"trial", "number", "label"};
  for (const Objective& objective : table.objectives) header.push_back(objective_text(objective));
  header.insert(header.end(), {"feasible", "params"});
  TextTable text(header);
  std::vector<const ParetoRow*> front;
  for (const ParetoRow& row : table.rows)
    if (row.on_front) front.push_back(&row);
  std::stable_sort(front.begin(), front.end(), [](const ParetoRow* a, const ParetoRow* b) { return a->point < b->point; });
  for (const ParetoRow* row : front) {
    std::vector<std::string> cells{std::to_string(row->trial.id), std::to_string(row->trial.number), trial_label(row->trial)};
    for (double value : row->point) cells.push_back(number_text(value));
    cells.insert(cells.end(), {row->feasible ? "yes" : "no", params_text(row->trial)});
    text.add(cells);
  }
  text.print(out);
  out << front.size() << " of " << table.rows.size() << " complete trials on the front";
  if (table.missing) out << "; " << table.missing << " lack a value and are on no front";
  if (table.infeasible) out << "; " << table.infeasible << " infeasible";
  out << "\n";
}

void print_hypervolume(const ParetoTable& table, const std::vector<double>& reference, std::ostream& out) {
  const auto directions = directions_of(table.objectives);
  std::vector<std::vector<double>> so_far;
  TextTable history({"after_trial", "number", "hypervolume"});
  double last = 0;
  for (const ParetoRow& row : table.rows) {
    so_far.push_back(row.point);
    last = hypervolume(so_far, directions, reference);
    history.add({std::to_string(row.trial.id), std::to_string(row.trial.number), number_text(last)});
  }
  std::string objectives;
  for (const Objective& objective : table.objectives) objectives += (objectives.empty() ? "" : ",") + objective_text(objective);
  out << "hypervolume " << number_text(last) << " (" << objectives << ", " << table.rows.size() << " complete trials)\n";
  out << "history:\n";
  history.print(out);
}

}  // namespace prime::store
