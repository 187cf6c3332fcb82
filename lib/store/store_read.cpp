// Store reads: trials with their params/values/attributes (four queries per call, joined here,
// so listing 30,000 trials stays a handful of statements), curves and intermediate values.
#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "store/database.h"
#include "store/store.h"
#include "util/error.h"

namespace prime::store {

using detail::as_double;
using detail::as_int;
using detail::as_text;
using detail::is_null;
using detail::SqlValue;

namespace {

// Trials matching `where` (over trials t), each with params, values and attrs filled.
std::vector<Trial> load_trials(detail::Database& db, const std::string& where, const std::vector<SqlValue>& params,
                               const std::string& order) {
  std::vector<Trial> trials;
  std::unordered_map<int64_t, size_t> index_of;
  for (const auto& row : db.query("SELECT t.id, t.study_id, t.number, t.state, t.worker, t.started, t.finished, "
                                   "t.heartbeat, t.retries, t.retry_of, t.pruned_step, t.error FROM trials t WHERE " +
                                       where + " ORDER BY " + order,
                                   params)) {
    Trial trial;
    trial.id = as_int(row[0]);
    trial.study_id = as_int(row[1]);
    trial.number = as_int(row[2]);
    trial.state = parse_trial_state(as_text(row[3]));
    trial.worker = as_text(row[4]);
    trial.started = is_null(row[5]) ? 0 : as_double(row[5]);
    trial.finished = is_null(row[6]) ? 0 : as_double(row[6]);
    trial.heartbeat = is_null(row[7]) ? 0 : as_double(row[7]);
    trial.retries = static_cast<int>(as_int(row[8]));
    if (!is_null(row[9])) trial.retry_of = as_int(row[9]);
    if (!is_null(row[10])) trial.pruned_step = as_int(row[10]);
    trial.error = as_text(row[11]);
    index_of[trial.id] = trials.size();
    trials.push_back(std::move(trial));
  }
  if (trials.empty()) return trials;
  std::unordered_map<int64_t, size_t> objective_count;
  for (const auto& row : db.query("SELECT study_id, COUNT(*) FROM study_directions GROUP BY study_id"))
    objective_count[as_int(row[0])] = static_cast<size_t>(as_int(row[1]));
  for (Trial& trial : trials) trial.values.resize(objective_count[trial.study_id]);

  // The queries below select the trials again: a trial that entered `where` since the first one
  // (another worker claimed it; PostgreSQL reads each statement's own snapshot) is not ours.
  auto ours = [&](const SqlValue& id) -> Trial* {
    const auto found = index_of.find(as_int(id));
    return found == index_of.end() ? nullptr : &trials[found->second];
  };
  const std::string in_trials = " WHERE x.trial_id IN (SELECT t.id FROM trials t WHERE " + where + ")";
  for (const auto& row : db.query("SELECT x.trial_id, x.name, x.value, x.kind FROM trial_params x" + in_trials +
                                      " ORDER BY x.trial_id, x.position",
                                  params))
    if (Trial* trial = ours(row[0])) trial->params.push_back({as_text(row[1]), as_text(row[2]), as_text(row[3])});
  for (const auto& row : db.query("SELECT x.trial_id, x.objective, x.value FROM trial_values x" + in_trials, params)) {
    Trial* trial = ours(row[0]);
    const auto objective = static_cast<size_t>(as_int(row[1]));
    if (trial && objective < trial->values.size() && !is_null(row[2])) trial->values[objective] = as_double(row[2]);
  }
  for (const auto& row : db.query("SELECT x.trial_id, x.key, x.value FROM trial_user_attrs x" + in_trials, params))
    if (Trial* trial = ours(row[0])) trial->attrs[as_text(row[1])] = as_text(row[2]);
  return trials;
}

}  // namespace

std::vector<Trial> Store::trials(std::optional<int64_t> study_id, std::optional<TrialState> state) {
  std::string where = "1 = 1";
  std::vector<SqlValue> params;
  if (study_id) {
    where += " AND t.study_id = ?";
    params.push_back(*study_id);
  }
  if (state) {
    where += " AND t.state = ?";
    params.push_back(trial_state_name(*state));
  }
  return load_trials(*db_, where, params, study_id ? "t.number" : "t.id");
}

std::optional<Trial> Store::find_trial(int64_t trial_id) {
  auto trials = load_trials(*db_, "t.id = ?", {trial_id}, "t.id");
  if (trials.empty()) return std::nullopt;
  return std::move(trials[0]);
}

TrialDetail Store::trial_detail(int64_t trial_id) {
  auto trial = find_trial(trial_id);
  if (!trial) throw user_error("no trial ", trial_id, " in ", db_->display_url(), " (see prime-db trials)");
  TrialDetail detail;
  detail.study = study_by_id(trial->study_id);
  detail.trial = std::move(*trial);
  for (const auto& row : db_->query("SELECT name, COUNT(*), MIN(step), MAX(step), MIN(value), MAX(value) "
                                    "FROM trial_metrics WHERE trial_id = ? GROUP BY name ORDER BY name",
                                    {trial_id})) {
    MetricSummary summary;
    summary.name = as_text(row[0]);
    summary.count = as_int(row[1]);
    summary.first_step = as_int(row[2]);
    summary.last_step = as_int(row[3]);
    summary.min = as_double(row[4]);
    summary.max = as_double(row[5]);
    const auto last = db_->query("SELECT value FROM trial_metrics WHERE trial_id = ? AND name = ? "
                                 "ORDER BY step DESC, time DESC LIMIT 1",
                                 {trial_id, summary.name});
    summary.last = last.empty() ? std::nan("") : as_double(last[0][0]);
    detail.metrics.push_back(summary);
  }
  detail.artifacts = artifacts(trial_id);
  return detail;
}

std::vector<std::string> Store::metric_names(int64_t trial_id) {
  std::vector<std::string> names;
  for (const auto& row : db_->query("SELECT DISTINCT name FROM trial_metrics WHERE trial_id = ? ORDER BY name", {trial_id}))
    names.push_back(as_text(row[0]));
  return names;
}

std::vector<MetricPoint> Store::curve(int64_t trial_id, const std::string& metric) {
  std::vector<MetricPoint> points;
  for (const auto& row : db_->query("SELECT step, value, time FROM trial_metrics WHERE trial_id = ? AND name = ? "
                                    "ORDER BY step, time",
                                    {trial_id, metric}))
    points.push_back({as_int(row[0]), as_double(row[1]), as_double(row[2])});
  return points;
}

std::vector<NamedCurve> Store::stage_curves(int64_t trial_id, const std::string& metric) {
  const std::vector<MetricPoint> points = curve(trial_id, metric);
  std::vector<MetricPoint> marks;  // only marks prime-search could have written: whole numbers >= 1
  if (metric != kStageMetric)
    for (const MetricPoint& mark : curve(trial_id, kStageMetric))
      if (std::isfinite(mark.value) && mark.value >= 1 && mark.value < 1e9 && mark.value == std::floor(mark.value))
        marks.push_back(mark);
  std::vector<NamedCurve> pieces;
  size_t next = 0;
  std::string name = metric;  // before any mark: the metric's own name
  for (const MetricPoint& point : points) {
    while (next < marks.size() && marks[next].step <= point.step)
      name = metric + " (stage " + std::to_string(static_cast<int64_t>(marks[next++].value)) + ")";
    auto piece = std::find_if(pieces.begin(), pieces.end(), [&](const NamedCurve& p) { return p.name == name; });
    if (piece == pieces.end()) piece = pieces.insert(pieces.end(), NamedCurve{name, {}});
    piece->points.push_back(point);
  }
  if (pieces.size() <= 1) return {{metric, points}};
  return pieces;
}

std::vector<IntermediateValue> Store::intermediate_values(int64_t study_id, const std::string& metric, int64_t step) {
  std::vector<IntermediateValue> values;
  // The correlated MAX(step) and the row itself come from the (trial_id, name, step, time,
  // value) index alone: one leaf per trial, no table page (schema version 3).
  for (const auto& row : db_->query(
           "SELECT t.id, t.number, t.state, m.step, m.value, m.time FROM trials t JOIN trial_metrics m ON m.trial_id = t.id "
           "WHERE t.study_id = ? AND m.name = ? AND m.step = (SELECT MAX(m2.step) FROM trial_metrics m2 "
           "WHERE m2.trial_id = t.id AND m2.name = ? AND m2.step <= ?) ORDER BY t.number, m.time",
           {study_id, metric, metric, step})) {
    IntermediateValue value{as_int(row[0]), as_int(row[1]), parse_trial_state(as_text(row[2])), as_int(row[3]),
                            as_double(row[4])};
    // A step logged twice (a resumed run): the later row wins.
    if (!values.empty() && values.back().trial_id == value.trial_id)
      values.back() = value;
    else
      values.push_back(value);
  }
  return values;
}

}  // namespace prime::store
