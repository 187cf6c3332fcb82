// Schema creation and forward migrations. Each migration runs in its own write transaction
// with the version re-read inside it, so workers opening a new store at once create it once.
#include "store/schema.h"

#include <regex>

#include "util/error.h"

namespace prime::store::detail {
namespace {

// Version 1: the tables after Optuna's (studies, directions, trials, params, values, user
// attributes, metrics, artifacts, layer scores).
const char* const kVersion1 = R"(
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE studies (
  id {id},
  name TEXT NOT NULL UNIQUE,
  spec_json TEXT NOT NULL,
  constraints_json TEXT NOT NULL,
  created {real} NOT NULL);
CREATE TABLE study_directions (
  study_id BIGINT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
  objective INTEGER NOT NULL,
  name TEXT NOT NULL,
  direction TEXT NOT NULL CHECK (direction IN ('MINIMIZE', 'MAXIMIZE')),
  PRIMARY KEY (study_id, objective));
CREATE TABLE trials (
  id {id},
  study_id BIGINT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
  number BIGINT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('WAITING', 'RUNNING', 'COMPLETE', 'PRUNED', 'FAIL')),
  worker TEXT,
  started {real},
  finished {real},
  heartbeat {real},
  retries INTEGER NOT NULL DEFAULT 0,
  retry_of BIGINT REFERENCES trials(id),
  pruned_step BIGINT,
  error TEXT,
  UNIQUE (study_id, number));
CREATE INDEX trials_study_state ON trials (study_id, state, number);
CREATE TABLE trial_params (
  trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('categorical', 'int', 'float')),
  PRIMARY KEY (trial_id, name));
CREATE TABLE trial_values (
  trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  objective INTEGER NOT NULL,
  value {real},
  PRIMARY KEY (trial_id, objective));
CREATE TABLE trial_user_attrs (
  trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (trial_id, key));
CREATE TABLE trial_metrics (
  trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  step BIGINT NOT NULL,
  value {real},
  time {real} NOT NULL);
CREATE INDEX trial_metrics_curve ON trial_metrics (trial_id, name, step);
CREATE TABLE trial_artifacts (
  trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  kind TEXT NOT NULL,
  path TEXT NOT NULL,
  sha256 TEXT NOT NULL);
CREATE TABLE layer_scores (
  id {id},
  source TEXT NOT NULL,
  scorer TEXT NOT NULL,
  layer BIGINT NOT NULL,
  score {real},
  created {real} NOT NULL);
CREATE INDEX layer_scores_source ON layer_scores (source, scorer, layer);
INSERT INTO schema_version (version) VALUES (1);
)";

// Version 2: what a layer score cost to compute, and where.
const char* const kVersion2 = R"(
ALTER TABLE layer_scores ADD COLUMN cost_seconds {real} NOT NULL DEFAULT 0;
ALTER TABLE layer_scores ADD COLUMN device TEXT NOT NULL DEFAULT '';
UPDATE schema_version SET version = 2;
)";

// Version 3: the curve index carries the values, so a curve or a rung's intermediate values are
// read from the index alone. Cold, the table page each row needed was half the reads: on a
// 2 GB store (30,000 trials) all trials' intermediate values took 5.8 s and take 2.3-2.5 s.
// Building it costs ~35 s per 30 M rows, once.
const char* const kVersion3 = R"(
CREATE INDEX trial_metrics_points ON trial_metrics (trial_id, name, step, time, value);
DROP INDEX trial_metrics_curve;
UPDATE schema_version SET version = 3;
)";

// Version 4: the settings a layer score was computed with (prime-select's settings line), so a
// reuse can ask for the same ones. Older rows have none ('').
const char* const kVersion4 = R"(
ALTER TABLE layer_scores ADD COLUMN settings TEXT NOT NULL DEFAULT '';
UPDATE schema_version SET version = 4;
)";

bool has_other_tables(Database& db) {
  const std::string sql = db.backend() == "sqlite"
                              ? "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                              : "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()";
  return as_int(db.query(sql).at(0).at(0)) > 0;
}

// Serialises schema changes between processes: SQLite's BEGIN IMMEDIATE already does;
// PostgreSQL's concurrent CREATE TABLEs would otherwise collide.
void lock_schema(Database& db) {
  if (db.backend() == "postgresql") db.exec("SELECT pg_advisory_xact_lock(726954)");
}

}  // namespace

std::string migration_script(const Database& db, int version) {
  if (version < 1 || version > kSchemaVersion) throw internal_error("no migration to schema version ", version);
  const char* const scripts[] = {kVersion1, kVersion2, kVersion3, kVersion4};
  static_assert(sizeof scripts / sizeof *scripts == kSchemaVersion, "one migration per schema version");
  std::string script = scripts[version - 1];
  script = std::regex_replace(script, std::regex(R"(\{id\})"), db.id_column());
  return std::regex_replace(script, std::regex(R"(\{real\})"), db.real_type());
}

int read_schema_version(Database& db) {
  if (!db.has_table("schema_version")) return 0;
  const auto rows = db.query("SELECT MAX(version) FROM schema_version");
  return rows.empty() || is_null(rows[0][0]) ? 0 : static_cast<int>(as_int(rows[0][0]));
}

int prepare_schema(Database& db, bool read_only) {
  const std::string where = db.display_url();
  const int found = read_schema_version(db);
  if (found == 0 && has_other_tables(db))
    throw user_error("store ", where, " is a database of another program (it has tables but no prime schema_version)");
  if (found > kSchemaVersion)
    throw user_error("store ", where, " has schema version ", found, ", newer than this build knows (", kSchemaVersion,
                     "): update prime");
  if (read_only) {
    if (found == 0) throw user_error("store ", where, " is empty (no studies yet)");
    if (found < kSchemaVersion)
      throw user_error("store ", where, " has the older schema version ", found, "; open it once read-write (e.g. with ",
                       "prime-search) to migrate it to version ", kSchemaVersion);
    return found;
  }
  if (db.backend() == "sqlite") db.exec_script("PRAGMA journal_mode=WAL");
  for (int version = found + 1; version <= kSchemaVersion; ++version) {
    WriteTransaction transaction(db);
    lock_schema(db);
    const int now = read_schema_version(db);  // another process may have migrated meanwhile
    if (now >= version) continue;
    if (now == 0 && has_other_tables(db))
      throw user_error("store ", where, " is a database of another program (it has tables but no prime schema_version)");
    db.exec_script(migration_script(db, version));
    transaction.commit();
  }
  return found;
}

}  // namespace prime::store::detail
