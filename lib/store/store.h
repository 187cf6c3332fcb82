// The experiment store: studies, trials, their parameters, objective values, training curves,
// artifacts and layer scores, in one SQLite file (default) or a PostgreSQL database (sweeps over
// several machines). Shaped after Optuna's RDB schema so users recognise it; every table is
// readable without prime (README "Experiment store" documents each one).
//
// Both backends run the same SQL (placeholders are translated) and behave the same; only the
// claim differs in how it locks (BEGIN IMMEDIATE in SQLite, FOR UPDATE SKIP LOCKED in
// PostgreSQL). Times are Unix seconds (REAL / DOUBLE PRECISION) so staleness is plain arithmetic
// and pandas reads them with pd.to_datetime(unit="s").
//
// A Store is one connection: not thread-safe. A worker that heartbeats from another thread opens
// a second Store on the same URL. Errors in what the user gave (URL, file, study name) are
// UserError; a failing statement on a healthy store is prime::Error.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "util/metrics.h"

namespace prime::store {

namespace detail {
class Database;  // the backend connection (store/database.h)
}

// Optuna's states. WAITING = enqueued, not yet claimed by a worker.
enum class TrialState { Waiting, Running, Complete, Pruned, Fail };
std::string trial_state_name(TrialState state);          // "WAITING", "RUNNING", ...
TrialState parse_trial_state(const std::string& name);  // case-insensitive; UserError if unknown

enum class Direction { Minimize, Maximize };

struct Objective {
  std::string name;
  Direction direction = Direction::Minimize;
};
// "val_ppl:min", "decode_tok_s:max" (also "minimize"/"maximize"). UserError otherwise.
Objective parse_objective(const std::string& text);
// Comma-separated list of parse_objective items.
std::vector<Objective> parse_objectives(const std::string& text);
std::string objective_text(const Objective& objective);  // "val_ppl:min"

// What create_study needs. An existing study of the same name is returned as it is when its
// objectives (names and directions, in order) match; otherwise UserError.
struct StudyConfig {
  std::string name;
  std::vector<Objective> objectives;  // at least one
  std::string spec_json = "{}";       // the sweep spec as given (stored verbatim)
  std::vector<std::string> constraints;  // e.g. "state_bytes <= 64MiB" (stored verbatim)
};

struct Study {
  int64_t id = 0;
  std::string name;
  std::vector<Objective> objectives;
  std::string spec_json;
  std::vector<std::string> constraints;
  double created = 0;  // Unix seconds
  std::map<std::string, int64_t> trial_counts;  // state name -> count (studies() fills it)
};

// One parameter a trial used. kind: "categorical" (value is the text), "int" or "float" (value
// is the number as text, round-trippable). Names and values are stored verbatim.
struct TrialParam {
  std::string name;
  std::string value;
  std::string kind = "categorical";
};

struct Trial {
  int64_t id = 0;        // unique in the store (what `prime-db show` takes)
  int64_t study_id = 0;
  int64_t number = 0;    // 0, 1, 2, ... within its study, in enqueue order
  TrialState state = TrialState::Waiting;
  std::string worker;    // who claimed it (host:pid by convention); empty while WAITING
  double started = 0, finished = 0, heartbeat = 0;  // Unix seconds; 0 = not yet
  int retries = 0;       // how many times this trial's parameters were re-queued before it
  std::optional<int64_t> retry_of;      // the FAIL trial this one re-runs
  std::optional<int64_t> pruned_step;   // PRUNED: the step it stopped at
  std::string error;                    // FAIL: why
  std::vector<TrialParam> params;       // in the order enqueued
  std::vector<std::optional<double>> values;  // one per study objective; nullopt = missing
  std::map<std::string, std::string> attrs;   // user attributes (state_bytes, infeasible, ...)

  const TrialParam* param(const std::string& name) const;  // nullptr if absent
  bool infeasible() const;  // attrs["infeasible"] is "1" or "true"
};

// How a worker ends a trial. values: objective name -> value (objectives left out are missing;
// a name that is no objective is UserError). attrs are merged into the trial's user attributes.
struct TrialResult {
  TrialState state = TrialState::Complete;  // Complete, Pruned or Fail
  std::map<std::string, double> values;
  std::map<std::string, std::string> attrs;
  std::optional<int64_t> pruned_step;  // required for Pruned
  std::string error;                   // required (non-empty) for Fail
};

struct MetricPoint {
  int64_t step = 0;
  double value = 0;  // NaN when the value logged was not finite (stored as NULL)
  double time = 0;   // Unix seconds
};

// The metric prime-search records at each training stage's first step (value: the stage's number,
// 1, 2, ...), so that a trial's curves can be cut where one stage's loss gives way to another's.
inline constexpr const char* kStageMetric = "stage";

// A piece of a metric's curve: the whole curve, or its points within one stage.
struct NamedCurve {
  std::string name;  // the metric's, or "METRIC (stage N)"
  std::vector<MetricPoint> points;
};

struct MetricSummary {
  std::string name;
  int64_t count = 0;
  int64_t first_step = 0, last_step = 0;
  double last = 0, min = 0, max = 0;
};

struct Artifact {
  std::string kind;    // "checkpoint", "eval_json", "log", ...
  std::string path;
  std::string sha256;  // hex; may be empty when not computed
};

// One per-layer importance score from the layer-selection engine.
struct LayerScore {
  std::string source;   // the model source spec scored
  std::string scorer;   // scorer name
  int64_t layer = 0;
  double score = 0;
  double cost_seconds = 0;  // what computing this score took
  std::string device;       // "cpu", "cuda:0", ...
  std::string settings;     // what the score depends on (prime-select's settings line); '' if not recorded
  int64_t id = 0;           // the row's id, set when read (a later run's rows have larger ids)
};

// A trial's value of one metric at (or last before) a step: successive halving compares these.
struct IntermediateValue {
  int64_t trial_id = 0;
  int64_t number = 0;
  TrialState state = TrialState::Waiting;
  int64_t step = 0;  // the step the value was logged at (<= the step asked for)
  double value = 0;
};

// Everything `prime-db show` prints.
struct TrialDetail {
  Trial trial;
  Study study;
  std::vector<MetricSummary> metrics;  // by name
  std::vector<Artifact> artifacts;
};

// When a store's metrics sink writes its pending rows: once `seconds` have passed since it last
// wrote, or once `rows` are pending. Few large transactions keep a training step's share small:
// a PostgreSQL COPY costs ~20 us a row in batches of 512 and ~8 us in batches of thousands.
struct MetricsFlush {
  double seconds = 5;
  size_t rows = 50000;
};

enum class OpenMode {
  ReadWrite,  // create the store (and its schema) when missing; migrate an older schema
  ReadOnly,   // must exist; never writes (a store of an older schema is UserError: open it once
              // read-write to migrate)
};

class Store {
 public:
  // url: a file path (SQLite; "sqlite:PATH" also accepted) or postgresql://user[:pw]@host[:port]/db
  // (also postgres://). UserError, with nothing written, for: a directory, a read-only file or
  // directory (by its permission bits, also for root), a file that is not an SQLite database or
  // is another program's SQLite database, a store of a newer schema than this build knows, an
  // unreachable or refusing PostgreSQL server.
  static std::unique_ptr<Store> open(const std::string& url, OpenMode mode = OpenMode::ReadWrite);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& url() const { return url_; }
  std::string backend() const;  // "sqlite" | "postgresql"
  int schema_version();
  static int current_schema_version();

  // ---- studies ----
  Study create_study(const StudyConfig& config);  // create-or-get (see StudyConfig)
  std::optional<Study> find_study(const std::string& name);
  Study study(const std::string& name);  // UserError naming the known studies when absent
  Study study_by_id(int64_t study_id);
  std::vector<Study> studies();          // with trial_counts, by id

  // ---- trials: the worker side ----
  // Appends WAITING trials (numbers continue the study's), all in one transaction; returns ids.
  std::vector<int64_t> enqueue_trials(int64_t study_id, const std::vector<std::vector<TrialParam>>& params);
  int64_t enqueue_trial(int64_t study_id, const std::vector<TrialParam>& params);
  // Atomically takes the lowest-numbered WAITING trial: RUNNING, worker set, started = heartbeat
  // = now. nullopt when none is waiting. Two workers never get the same trial.
  std::optional<Trial> claim_trial(int64_t study_id, const std::string& worker);
  // heartbeat = now, if the trial is still RUNNING; false when it is not (e.g. marked stale).
  bool heartbeat(int64_t trial_id);
  // Marks the study's RUNNING trials whose heartbeat is older than stale_seconds FAIL ("stale
  // heartbeat: worker W silent for Ns"), and for each whose retries < max_retries enqueues a
  // WAITING copy (same params, retries + 1, retry_of = it). One transaction; returns the ids of
  // the trials marked FAIL.
  std::vector<int64_t> fail_stale_trials(int64_t study_id, double stale_seconds, int max_retries);
  // Ends a RUNNING trial. Returns false (and changes nothing) when the trial is no longer
  // RUNNING, e.g. it was declared stale meanwhile. UserError for an inconsistent result.
  bool finish_trial(int64_t trial_id, const TrialResult& result);
  void set_trial_attrs(int64_t trial_id, const std::map<std::string, std::string>& attrs);

  // ---- training curves ----
  // Appends rows (name, step, value, time = now) in one transaction.
  struct MetricRow {
    std::string name;
    int64_t step = 0;
    double value = 0;  // non-finite values are stored as NULL
    double time = 0;   // Unix seconds; 0 = when written
  };
  void log_metrics(int64_t trial_id, const std::vector<MetricRow>& rows);
  // A MetricsSink that writes each record's values as trial_metrics rows (labels are not
  // stored). A record only joins a vector; the rows go to the store in one transaction as
  // MetricsFlush says, on flush() (the trainer calls it at every checkpoint and at the end) and
  // in the destructor. The sink borrows this Store, which must outlive it.
  std::unique_ptr<MetricsSink> metrics_sink(int64_t trial_id, MetricsFlush flush = {});

  // ---- artifacts and layer scores ----
  void add_artifact(int64_t trial_id, const Artifact& artifact);
  std::vector<Artifact> artifacts(int64_t trial_id);
  void add_layer_scores(const std::vector<LayerScore>& scores);  // one transaction
  // Filters are optional (empty = any); ordered by source, scorer, layer.
  std::vector<LayerScore> layer_scores(const std::string& source = "", const std::string& scorer = "");

  // ---- reads ----
  // A study's trials by number (all studies' by id when study_id is nullopt), optionally of
  // one state; params, values and attrs filled.
  std::vector<Trial> trials(std::optional<int64_t> study_id = std::nullopt,
                            std::optional<TrialState> state = std::nullopt);
  std::optional<Trial> find_trial(int64_t trial_id);
  TrialDetail trial_detail(int64_t trial_id);  // UserError when absent
  std::vector<std::string> metric_names(int64_t trial_id);
  std::vector<MetricPoint> curve(int64_t trial_id, const std::string& metric);  // by step
  // `metric`'s curve cut at the trial's stage marks (kStageMetric values that are whole numbers
  // >= 1; others are ignored): one piece per stage it has points in, named "METRIC (stage N)",
  // where its points fall into more than one piece; else one piece named METRIC. A point belongs
  // to the last stage that started at or before its step (points before every mark: a piece named
  // METRIC); a stage number that comes again adds to its piece.
  std::vector<NamedCurve> stage_curves(int64_t trial_id, const std::string& metric);
  // For each trial of the study that logged `metric` at some step <= `step`: its value at the
  // greatest such step. Ordered by trial number.
  std::vector<IntermediateValue> intermediate_values(int64_t study_id, const std::string& metric, int64_t step);

  // For backends and tests: the connection.
  detail::Database& database() { return *db_; }

 private:
  Store(std::string url, std::unique_ptr<detail::Database> db);
  std::string url_;
  std::unique_ptr<detail::Database> db_;
};

// A number for `name` from a trial: its objective value when `name` is an objective of the
// study, else a numeric user attribute, else a numeric parameter; nullopt when none (or NaN).
std::optional<double> trial_number(const Trial& trial, const Study& study, const std::string& name);

// Unix seconds now (what the store writes as times).
double unix_now();

}  // namespace prime::store
