// Store: opening, studies and the worker side of trials (enqueue, claim, heartbeat, stale,
// finish). Reads are in store_read.cpp, curves/artifacts/scores in store_records.cpp.
#include "store/store.h"

#include <nlohmann/json.hpp>

#include <set>

#include "store/database.h"
#include "store/schema.h"
#include "util/error.h"

namespace prime::store {

using detail::as_double;
using detail::as_int;
using detail::as_text;
using detail::SqlValue;
using detail::WriteTransaction;

namespace {

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

std::string direction_word(Direction direction) { return direction == Direction::Minimize ? "MINIMIZE" : "MAXIMIZE"; }

void check_params(const std::vector<TrialParam>& params) {
  std::set<std::string> seen;
  for (const TrialParam& p : params) {
    if (p.name.empty()) throw user_error("a trial parameter has an empty name");
    if (!seen.insert(p.name).second) throw user_error("trial parameter '", p.name, "' is given twice");
    if (p.kind != "categorical" && p.kind != "int" && p.kind != "float")
      throw user_error("trial parameter '", p.name, "' has kind '", p.kind, "' (expected categorical, int or float)");
  }
}

// Inside a write transaction: the study's next trial number. PostgreSQL needs the study row
// locked so two enqueuers do not pick the same number; SQLite's transaction is already alone.
int64_t next_number(detail::Database& db, int64_t study_id) {
  if (db.backend() == "postgresql") db.exec("SELECT id FROM studies WHERE id = ? FOR UPDATE", {study_id});
  return as_int(db.query("SELECT COALESCE(MAX(number) + 1, 0) FROM trials WHERE study_id = ?", {study_id}).at(0).at(0));
}

int64_t insert_trial(detail::Database& db, int64_t study_id, int64_t number, const std::vector<TrialParam>& params,
                     int retries, std::optional<int64_t> retry_of) {
  const SqlValue retry_of_value = retry_of ? SqlValue(*retry_of) : SqlValue();
  const int64_t id = as_int(db.query("INSERT INTO trials (study_id, number, state, retries, retry_of) "
                                     "VALUES (?, ?, 'WAITING', ?, ?) RETURNING id",
                                     {study_id, number, int64_t{retries}, retry_of_value})
                                .at(0)
                                .at(0));
  for (size_t position = 0; position < params.size(); ++position)
    db.exec("INSERT INTO trial_params (trial_id, position, name, value, kind) VALUES (?, ?, ?, ?, ?)",
            {id, static_cast<int64_t>(position), params[position].name, params[position].value, params[position].kind});
  return id;
}

}  // namespace

Store::Store(std::string url, std::unique_ptr<detail::Database> db) : url_(std::move(url)), db_(std::move(db)) {}
Store::~Store() = default;

std::unique_ptr<Store> Store::open(const std::string& url, OpenMode mode) {
  if (url.empty()) throw user_error("--store is empty: give a file path (SQLite) or postgresql://...");
  const auto access = mode == OpenMode::ReadOnly ? detail::Access::ReadOnly : detail::Access::ReadWrite;
  std::unique_ptr<detail::Database> db;
  if (starts_with(url, "postgresql://") || starts_with(url, "postgres://"))
    db = detail::open_postgres(url, access);
  else
    db = detail::open_sqlite(starts_with(url, "sqlite:") ? url.substr(7) : url, access);
  detail::prepare_schema(*db, mode == OpenMode::ReadOnly);
  return std::unique_ptr<Store>(new Store(url, std::move(db)));
}

std::string Store::backend() const { return db_->backend(); }
int Store::schema_version() { return detail::read_schema_version(*db_); }
int Store::current_schema_version() { return detail::kSchemaVersion; }

// ---- studies ------------------------------------------------------------------------------

Study Store::create_study(const StudyConfig& config) {
  if (config.name.empty()) throw user_error("a study needs a name");
  if (config.objectives.empty()) throw user_error("study '", config.name, "' needs at least one objective");
  std::set<std::string> names;
  for (const Objective& objective : config.objectives)
    if (!names.insert(objective.name).second)
      throw user_error("study '", config.name, "': objective '", objective.name, "' is given twice");
  {
    WriteTransaction transaction(*db_);
    // ON CONFLICT: a concurrent creator of the same study wins and this one just reads it.
    const auto created = db_->query(
        "INSERT INTO studies (name, spec_json, constraints_json, created) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name) DO NOTHING RETURNING id",
        {config.name, config.spec_json, nlohmann::json(config.constraints).dump(), unix_now()});
    if (!created.empty()) {
      const int64_t study_id = as_int(created[0][0]);
      for (size_t index = 0; index < config.objectives.size(); ++index)
        db_->exec("INSERT INTO study_directions (study_id, objective, name, direction) VALUES (?, ?, ?, ?)",
                  {study_id, static_cast<int64_t>(index), config.objectives[index].name,
                   direction_word(config.objectives[index].direction)});
    }
    transaction.commit();
  }
  Study study = this->study(config.name);
  bool same = study.objectives.size() == config.objectives.size();
  for (size_t index = 0; same && index < config.objectives.size(); ++index)
    same = study.objectives[index].name == config.objectives[index].name &&
           study.objectives[index].direction == config.objectives[index].direction;
  if (!same) {
    std::string have;
    for (const Objective& objective : study.objectives) have += (have.empty() ? "" : ",") + objective_text(objective);
    throw user_error("study '", config.name, "' already exists in ", db_->display_url(), " with objectives ", have,
                     "; use another study name or the same objectives");
  }
  return study;
}

namespace {
Study study_from_row(detail::Database& db, const detail::Row& row) {
  Study study;
  study.id = as_int(row[0]);
  study.name = as_text(row[1]);
  study.spec_json = as_text(row[2]);
  study.constraints = nlohmann::json::parse(as_text(row[3])).get<std::vector<std::string>>();
  study.created = as_double(row[4]);
  for (const auto& direction :
       db.query("SELECT name, direction FROM study_directions WHERE study_id = ? ORDER BY objective", {study.id}))
    study.objectives.push_back(
        {as_text(direction[0]), as_text(direction[1]) == "MAXIMIZE" ? Direction::Maximize : Direction::Minimize});
  return study;
}
constexpr const char* kStudyColumns = "SELECT id, name, spec_json, constraints_json, created FROM studies";
}  // namespace

std::optional<Study> Store::find_study(const std::string& name) {
  const auto rows = db_->query(std::string(kStudyColumns) + " WHERE name = ?", {name});
  if (rows.empty()) return std::nullopt;
  return study_from_row(*db_, rows[0]);
}

Study Store::study(const std::string& name) {
  if (auto found = find_study(name)) return *found;
  std::string known;
  for (const auto& row : db_->query("SELECT name FROM studies ORDER BY id"))
    known += (known.empty() ? "" : ", ") + as_text(row[0]);
  throw user_error("no study '", name, "' in ", db_->display_url(), known.empty() ? " (it has no studies)" : " (studies: " + known + ")");
}

Study Store::study_by_id(int64_t study_id) {
  const auto rows = db_->query(std::string(kStudyColumns) + " WHERE id = ?", {study_id});
  if (rows.empty()) throw user_error("no study with id ", study_id, " in ", db_->display_url());
  return study_from_row(*db_, rows[0]);
}

std::vector<Study> Store::studies() {
  std::vector<Study> studies;
  for (const auto& row : db_->query(std::string(kStudyColumns) + " ORDER BY id")) studies.push_back(study_from_row(*db_, row));
  for (const auto& row : db_->query("SELECT study_id, state, COUNT(*) FROM trials GROUP BY study_id, state"))
    for (Study& study : studies)
      if (study.id == as_int(row[0])) study.trial_counts[as_text(row[1])] = as_int(row[2]);
  return studies;
}

// ---- trials: the worker side ----------------------------------------------------------------

std::vector<int64_t> Store::enqueue_trials(int64_t study_id, const std::vector<std::vector<TrialParam>>& params) {
  for (const auto& trial_params : params) check_params(trial_params);
  study_by_id(study_id);
  std::vector<int64_t> ids;
  WriteTransaction transaction(*db_);
  int64_t number = next_number(*db_, study_id);
  for (const auto& trial_params : params) ids.push_back(insert_trial(*db_, study_id, number++, trial_params, 0, std::nullopt));
  transaction.commit();
  return ids;
}

int64_t Store::enqueue_trial(int64_t study_id, const std::vector<TrialParam>& params) {
  return enqueue_trials(study_id, {params}).at(0);
}

std::optional<Trial> Store::claim_trial(int64_t study_id, const std::string& worker) {
  int64_t trial_id = 0;
  {
    WriteTransaction transaction(*db_);
    const auto rows = db_->query("SELECT id FROM trials WHERE study_id = ? AND state = 'WAITING' ORDER BY number LIMIT 1" +
                                     db_->row_lock_clause(),
                                 {study_id});
    if (rows.empty()) return std::nullopt;
    trial_id = as_int(rows[0][0]);
    const double now = unix_now();
    db_->exec("UPDATE trials SET state = 'RUNNING', worker = ?, started = ?, heartbeat = ? WHERE id = ?",
              {worker, now, now, trial_id});
    transaction.commit();
  }
  return find_trial(trial_id);
}

bool Store::heartbeat(int64_t trial_id) {
  return !db_->query("UPDATE trials SET heartbeat = ? WHERE id = ? AND state = 'RUNNING' RETURNING id",
                     {unix_now(), trial_id})
              .empty();
}

std::vector<int64_t> Store::fail_stale_trials(int64_t study_id, double stale_seconds, int max_retries) {
  const double now = unix_now();
  std::vector<int64_t> failed;
  WriteTransaction transaction(*db_);
  const auto stale = db_->query("SELECT id, worker, heartbeat, retries FROM trials WHERE study_id = ? AND state = 'RUNNING' "
                                "AND heartbeat < ? ORDER BY number" + db_->row_lock_clause(),
                                {study_id, now - stale_seconds});
  if (stale.empty()) return failed;
  int64_t number = next_number(*db_, study_id);
  for (const auto& row : stale) {
    const int64_t trial_id = as_int(row[0]);
    const int retries = static_cast<int>(as_int(row[3]));
    const std::string error = prime::detail::concat("stale heartbeat: worker ", as_text(row[1]), " silent for ",
                                             static_cast<int64_t>(now - as_double(row[2])), " s");
    db_->exec("UPDATE trials SET state = 'FAIL', finished = ?, error = ? WHERE id = ?", {now, error, trial_id});
    failed.push_back(trial_id);
    if (retries >= max_retries) continue;
    std::vector<TrialParam> params;
    for (const auto& p : db_->query("SELECT name, value, kind FROM trial_params WHERE trial_id = ? ORDER BY position", {trial_id}))
      params.push_back({as_text(p[0]), as_text(p[1]), as_text(p[2])});
    insert_trial(*db_, study_id, number++, params, retries + 1, trial_id);
  }
  transaction.commit();
  return failed;
}

bool Store::finish_trial(int64_t trial_id, const TrialResult& result) {
  if (result.state == TrialState::Waiting || result.state == TrialState::Running)
    throw user_error("trial ", trial_id, " must finish as COMPLETE, PRUNED or FAIL, not ", trial_state_name(result.state));
  if (result.state == TrialState::Pruned && !result.pruned_step)
    throw user_error("trial ", trial_id, " is PRUNED without the step it stopped at");
  if (result.state == TrialState::Fail && result.error.empty())
    throw user_error("trial ", trial_id, " FAILed without an error message");
  const auto trial = find_trial(trial_id);
  if (!trial) throw user_error("no trial ", trial_id, " in ", db_->display_url());
  const Study study = study_by_id(trial->study_id);
  std::vector<std::pair<int64_t, double>> values;
  for (const auto& [name, value] : result.values) {
    size_t index = 0;
    while (index < study.objectives.size() && study.objectives[index].name != name) ++index;
    if (index == study.objectives.size())
      throw user_error("trial ", trial_id, ": '", name, "' is no objective of study '", study.name, "'");
    values.emplace_back(static_cast<int64_t>(index), value);
  }
  WriteTransaction transaction(*db_);
  const SqlValue pruned = result.pruned_step ? SqlValue(*result.pruned_step) : SqlValue();
  const SqlValue error = result.error.empty() ? SqlValue() : SqlValue(result.error);
  if (db_->query("UPDATE trials SET state = ?, finished = ?, pruned_step = ?, error = ? WHERE id = ? AND state = 'RUNNING' "
                 "RETURNING id",
                 {trial_state_name(result.state), unix_now(), pruned, error, trial_id})
          .empty())
    return false;
  for (const auto& [objective, value] : values)
    db_->exec("INSERT INTO trial_values (trial_id, objective, value) VALUES (?, ?, ?) "
              "ON CONFLICT (trial_id, objective) DO UPDATE SET value = excluded.value",
              {trial_id, objective, detail::real_or_null(value)});
  for (const auto& [key, value] : result.attrs)
    db_->exec("INSERT INTO trial_user_attrs (trial_id, key, value) VALUES (?, ?, ?) "
              "ON CONFLICT (trial_id, key) DO UPDATE SET value = excluded.value",
              {trial_id, key, value});
  transaction.commit();
  return true;
}

void Store::set_trial_attrs(int64_t trial_id, const std::map<std::string, std::string>& attrs) {
  WriteTransaction transaction(*db_);
  for (const auto& [key, value] : attrs)
    db_->exec("INSERT INTO trial_user_attrs (trial_id, key, value) VALUES (?, ?, ?) "
              "ON CONFLICT (trial_id, key) DO UPDATE SET value = excluded.value",
              {trial_id, key, value});
  transaction.commit();
}

}  // namespace prime::store
