// What trials record besides their outcome: training curves (batched), artifacts, and the
// layer-selection engine's per-layer scores.
#include <chrono>

#include "store/database.h"
#include "store/store.h"
#include "util/error.h"

namespace prime::store {

using detail::as_double;
using detail::as_int;
using detail::as_text;
using detail::SqlValue;
using detail::WriteTransaction;

namespace {

class StoreMetrics : public MetricsSink {
 public:
  StoreMetrics(Store& store, int64_t trial_id, MetricsFlush when)
      : store_(store), trial_id_(trial_id), when_(when), last_flush_(std::chrono::steady_clock::now()) {
    when_.rows = std::max<size_t>(when_.rows, 1);
  }
  ~StoreMetrics() override {
    try {
      flush();
    } catch (const std::exception&) {
      // A destructor must not throw; whoever needs the rows durable calls flush() first.
    }
  }
  void write(const MetricRecord& record) override {
    const double now = unix_now();
    for (const auto& [name, value] : record.values) pending_.push_back({name, record.step, value, now});
    if (pending_.size() >= when_.rows ||
        std::chrono::steady_clock::now() - last_flush_ >= std::chrono::duration<double>(when_.seconds))
      flush();
  }
  void flush() override {
    last_flush_ = std::chrono::steady_clock::now();
    if (pending_.empty()) return;
    store_.log_metrics(trial_id_, pending_);
    pending_.clear();
  }

 private:
  Store& store_;
  int64_t trial_id_;
  MetricsFlush when_;
  std::chrono::steady_clock::time_point last_flush_;
  std::vector<Store::MetricRow> pending_;
};

}  // namespace

void Store::log_metrics(int64_t trial_id, const std::vector<MetricRow>& rows) {
  if (rows.empty()) return;
  const double now = unix_now();
  std::vector<SqlValue> values;
  values.reserve(rows.size() * 5);
  for (const MetricRow& row : rows)
    values.insert(values.end(), {trial_id, row.name, row.step, detail::real_or_null(row.value), row.time > 0 ? row.time : now});
  WriteTransaction transaction(*db_);
  db_->insert_rows("trial_metrics", {"trial_id", "name", "step", "value", "time"}, values);
  transaction.commit();
}

std::unique_ptr<MetricsSink> Store::metrics_sink(int64_t trial_id, MetricsFlush flush) {
  return std::make_unique<StoreMetrics>(*this, trial_id, flush);
}

void Store::add_artifact(int64_t trial_id, const Artifact& artifact) {
  if (artifact.kind.empty() || artifact.path.empty()) throw user_error("an artifact needs a kind and a path");
  db_->exec("INSERT INTO trial_artifacts (trial_id, kind, path, sha256) VALUES (?, ?, ?, ?)",
            {trial_id, artifact.kind, artifact.path, artifact.sha256});
}

std::vector<Artifact> Store::artifacts(int64_t trial_id) {
  std::vector<Artifact> artifacts;
  for (const auto& row :
       db_->query("SELECT kind, path, sha256 FROM trial_artifacts WHERE trial_id = ? ORDER BY kind, path", {trial_id}))
    artifacts.push_back({as_text(row[0]), as_text(row[1]), as_text(row[2])});
  return artifacts;
}

void Store::add_layer_scores(const std::vector<LayerScore>& scores) {
  const double now = unix_now();
  WriteTransaction transaction(*db_);
  for (const LayerScore& score : scores)
    db_->exec("INSERT INTO layer_scores (source, scorer, layer, score, cost_seconds, device, settings, created) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              {score.source, score.scorer, score.layer, detail::real_or_null(score.score), score.cost_seconds,
               score.device, score.settings, now});
  transaction.commit();
}

std::vector<LayerScore> Store::layer_scores(const std::string& source, const std::string& scorer) {
  std::vector<LayerScore> scores;
  for (const auto& row : db_->query("SELECT source, scorer, layer, score, cost_seconds, device, settings, id "
                                    "FROM layer_scores "
                                    "WHERE (? = '' OR source = ?) AND (? = '' OR scorer = ?) "
                                    "ORDER BY source, scorer, layer, id",
                                    {source, source, scorer, scorer}))
    scores.push_back({as_text(row[0]), as_text(row[1]), as_int(row[2]), as_double(row[3]), as_double(row[4]),
                      as_text(row[5]), as_text(row[6]), as_int(row[7])});
  return scores;
}

}  // namespace prime::store
