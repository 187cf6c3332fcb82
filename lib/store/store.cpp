// Store: studies and the worker side of trials (enqueue, claim, heartbeat, stale, finish).
#include "store/store.h"

#include "store/database.h"
#include "util/error.h"

namespace prime::store {

#define PRIME_STORE_TODO throw internal_error("store: ", __func__, " is not implemented yet")

Store::Store(std::string url, std::unique_ptr<detail::Database> db) : url_(std::move(url)), db_(std::move(db)) {}
Store::~Store() = default;
std::unique_ptr<Store> Store::open(const std::string&, OpenMode) { PRIME_STORE_TODO; }
std::string Store::backend() const { return db_->backend(); }
int Store::schema_version() { PRIME_STORE_TODO; }
int Store::current_schema_version() { return 2; }
Study Store::create_study(const StudyConfig&) { PRIME_STORE_TODO; }
std::optional<Study> Store::find_study(const std::string&) { PRIME_STORE_TODO; }
Study Store::study(const std::string&) { PRIME_STORE_TODO; }
Study Store::study_by_id(int64_t) { PRIME_STORE_TODO; }
std::vector<Study> Store::studies() { PRIME_STORE_TODO; }
std::vector<int64_t> Store::enqueue_trials(int64_t, const std::vector<std::vector<TrialParam>>&) { PRIME_STORE_TODO; }
int64_t Store::enqueue_trial(int64_t, const std::vector<TrialParam>&) { PRIME_STORE_TODO; }
std::optional<Trial> Store::claim_trial(int64_t, const std::string&) { PRIME_STORE_TODO; }
bool Store::heartbeat(int64_t) { PRIME_STORE_TODO; }
std::vector<int64_t> Store::fail_stale_trials(int64_t, double, int) { PRIME_STORE_TODO; }
bool Store::finish_trial(int64_t, const TrialResult&) { PRIME_STORE_TODO; }
void Store::set_trial_attrs(int64_t, const std::map<std::string, std::string>&) { PRIME_STORE_TODO; }
void Store::log_metrics(int64_t, const std::vector<MetricRow>&) { PRIME_STORE_TODO; }
std::unique_ptr<MetricsSink> Store::metrics_sink(int64_t, size_t) { PRIME_STORE_TODO; }
void Store::add_artifact(int64_t, const Artifact&) { PRIME_STORE_TODO; }
std::vector<Artifact> Store::artifacts(int64_t) { PRIME_STORE_TODO; }
void Store::add_layer_scores(const std::vector<LayerScore>&) { PRIME_STORE_TODO; }
std::vector<LayerScore> Store::layer_scores(const std::string&, const std::string&) { PRIME_STORE_TODO; }
std::vector<Trial> Store::trials(std::optional<int64_t>, std::optional<TrialState>) { PRIME_STORE_TODO; }
std::optional<Trial> Store::find_trial(int64_t) { PRIME_STORE_TODO; }
TrialDetail Store::trial_detail(int64_t) { PRIME_STORE_TODO; }
std::vector<std::string> Store::metric_names(int64_t) { PRIME_STORE_TODO; }
std::vector<MetricPoint> Store::curve(int64_t, const std::string&) { PRIME_STORE_TODO; }
std::vector<IntermediateValue> Store::intermediate_values(int64_t, const std::string&, int64_t) { PRIME_STORE_TODO; }

}  // namespace prime::store
