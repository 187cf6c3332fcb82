#include "search/sweep/sweep.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <thread>

#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include "search/sweep/halving.h"
#include "search/sweep/sampler.h"
#include "search/sweep/study_inputs.h"
#include "search/sweep/trial.h"
#include "store/database.h"
#include "store/db_commands.h"
#include "util/cli.h"
#include "util/error.h"

namespace prime::search {

namespace fs = std::filesystem;

namespace {

bool is_postgres(const std::string& url) { return url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0; }


// A measured figure as a trial attribute: the shortest text that reads back as the same double
// (a whole number as one: state_bytes 1234567890, not 1.23457e+09).
std::string stored_number(double value) {
  if (!std::isfinite(value)) return store::number_text(value, "nan");
  if (value == std::floor(value) && std::fabs(value) < 1e15) return std::to_string(static_cast<long long>(value));
  return nlohmann::json(value).dump();
}

// Keeps a claimed trial's heartbeat fresh from a thread with its own store connection (a Store
// is one connection and not thread-safe).
class Heartbeat {
 public:
  Heartbeat(const std::string& url, int64_t trial_id, double seconds)
      : store_(store::Store::open(url)), trial_id_(trial_id), period_(seconds) {
    thread_ = std::thread([this] { loop(); });
  }
  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!wake_.wait_for(lock, std::chrono::duration<double>(period_), [this] { return stop_; })) {
      try {
        store_->heartbeat(trial_id_);
      } catch (const std::exception&) {
        // A busy store now and then is harmless; a trial silent for the whole stale window is
        // what gets re-queued.
      }
    }
  }
  std::unique_ptr<store::Store> store_;
  int64_t trial_id_;
  double period_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

std::string describe_params(const std::vector<store::TrialParam>& params) {
  std::string out;
  for (const auto& param : params) out += (out.empty() ? "" : " ") + param.name + "=" + param.value;
  return out;
}

// The early-stopping decision of one trial at each rung it reaches (halving.h).
class RungJudge {
 public:
  RungJudge(store::Store& store, const SweepSpec& spec, const store::Study& study, const store::Trial& trial,
            std::ostream& log)
      : store_(store), rule_(spec.early_stopping), study_(study), trial_(trial), log_(log) {}

  bool operator()(const MetricRecord& record, const std::map<std::string, double>& latest) {
    if (!rule_.enabled()) return false;
    const auto tokens_at = record.values.find("tokens");
    if (tokens_at == record.values.end()) return false;
    // Decide on a record that carries one of the metrics, once all have a value; with a metric of
    // the evaluation (val_*), only on an evaluation's record, so that a rung's value is that of the
    // evaluation at (or after) the rung's step, not one from the evaluation before it.
    bool carries = false, carries_eval = true;
    for (const auto& metric : rule_.metrics) {
      if (!latest.count(metric.name)) return false;
      const bool here = record.values.count(metric.name) > 0;
      carries = carries || here;
      if (metric.name.rfind("val_", 0) == 0) carries_eval = carries_eval && here;
    }
    if (!carries || !carries_eval) return false;
    const int reached = rung_at(rule_, static_cast<int64_t>(tokens_at->second));
    while (next_rung_ <= reached) {
      const int rung = next_rung_++;
      std::vector<store::Store::MetricRow> rows;
      for (const auto& metric : rule_.metrics) rows.push_back({"rung." + metric.name, rung, latest.at(metric.name)});
      store_.log_metrics(trial_.id, rows);
      if (!keep(rung)) return true;
    }
    return false;
  }

 private:
  bool keep(int rung) {
    std::map<int64_t, std::vector<double>> peers;  // trial id -> values, for trials with all metrics
    for (size_t m = 0; m < rule_.metrics.size(); ++m)
      for (const auto& value : store_.intermediate_values(study_.id, "rung." + rule_.metrics[m].name, rung)) {
        // A failed attempt's values are a duplicate of its re-queued trial's.
        if (value.step != rung || value.state == store::TrialState::Fail) continue;
        auto& row = peers[value.trial_id];
        if (row.size() == m) row.push_back(value.value);
      }
    std::vector<std::vector<double>> values;
    size_t self = 0;
    for (const auto& [id, row] : peers) {
      if (row.size() != rule_.metrics.size()) continue;
      if (id == trial_.id) self = values.size();
      values.push_back(row);
    }
    std::vector<store::Direction> directions;
    for (const auto& metric : rule_.metrics) directions.push_back(metric.direction);
    const bool go_on = keep_at_rung(values, directions, self, rule_.eta, rule_.min_trials);
    log_ << "rung " << rung << " (" << rung_tokens(rule_, rung) << " tokens): " << values.size()
         << " trial(s) reached it; " << (go_on ? "goes on" : "pruned") << "\n";
    return go_on;
  }

  store::Store& store_;
  const EarlyStopping& rule_;
  const store::Study& study_;
  const store::Trial& trial_;
  std::ostream& log_;
  int next_rung_ = 0;
};

store::TrialResult trial_result(const SweepSpec& spec, const TrialOutcome& outcome, const fs::path& dir) {
  store::TrialResult result;
  result.state = outcome.pruned ? store::TrialState::Pruned : store::TrialState::Complete;
  if (outcome.pruned) result.pruned_step = outcome.pruned_step;
  for (const auto& objective : spec.objectives)
    if (auto found = outcome.measured.find(objective.name); found != outcome.measured.end() && std::isfinite(found->second))
      result.values[objective.name] = found->second;
  for (const auto& [name, value] : outcome.measured) result.attrs[name] = stored_number(value);
  result.attrs["dir"] = dir.string();
  if (!outcome.pruned && !spec.constraints.empty()) {
    std::string broken;
    for (const auto& constraint : spec.constraints) {
      const auto found = outcome.measured.find(constraint.metric);
      if (found == outcome.measured.end() || !constraint.satisfied(found->second))
        broken += (broken.empty() ? "" : "; ") + constraint.text;
    }
    result.attrs["infeasible"] = broken.empty() ? "0" : "1";
    if (!broken.empty()) result.attrs["violated"] = broken;
  }
  return result;
}

std::string worker_id() {
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  return std::string(host) + ":" + std::to_string(::getpid());
}

std::string trial_device(const SweepSpec& spec, const SweepOptions& options) {
  if (spec.train.contains("device")) return spec.train["device"].get<std::string>();
  return parse_device(options.device).is_cuda() ? "cuda" : "cpu";
}

}  // namespace

fs::path trials_root(const SweepOptions& options) {
  if (!options.trials_dir.empty()) return options.trials_dir;
  if (is_postgres(options.store_url))
    throw user_error("--trials-dir: required with a PostgreSQL store (a directory every worker can write, e.g. on "
                     "shared storage)");
  std::string path = options.store_url;
  if (path.rfind("sqlite:", 0) == 0) path = path.substr(7);
  return path + ".trials";
}

store::Study prepare_study(store::Store& store, const SweepSpec& spec, bool enqueue, std::ostream& log) {
  store::StudyConfig config;
  config.name = spec.study;
  config.objectives = spec.objectives;
  config.spec_json = spec.raw.dump();
  for (const auto& constraint : spec.constraints) config.constraints.push_back(constraint.text);
  if (auto existing = store.find_study(spec.study); existing && existing->spec_json != config.spec_json)
    throw user_error("study '", spec.study, "' in ", store.url(), " was made by another spec; give this one another "
                     "\"study\" name (or use another store)");
  const store::Study study = store.create_study(config);
  if (!store.trials(study.id).empty()) return study;
  if (enqueue) {
    std::vector<std::vector<store::TrialParam>> params;
    for (const auto& set : sample_trials(spec)) params.push_back(to_trial_params(set));
    store.enqueue_trials(study.id, params);
    log << "study " << spec.study << ": " << params.size() << " trial(s) enqueued (" << spec.sampler.kind << ")\n";
    return study;
  }
  // Another process enqueues (in one transaction): wait for its trials to appear.
  for (int waited = 0; store.trials(study.id).empty(); ++waited) {
    if (waited > 600) throw user_error("study '", spec.study, "': no trials were enqueued after 10 minutes");
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  return study;
}

int run_worker(const SweepSpec& spec, const SweepOptions& options, const std::string& name, std::ostream& log) {
  const std::string worker_name = name.empty() ? worker_id() : name;
  auto store = store::Store::open(options.store_url);
  const store::Study study = store->study(spec.study);
  const fs::path study_dir = trials_root(options) / spec.study;
  const std::string device = trial_device(spec, options);
  // On a CPU the workers share the cores: one intra-op pool per core each, not a full pool each
  // (oversubscribed OpenMP pools spin against each other and run many times slower).
  if (device == "cpu") {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(std::max(1, cores / options.workers));
  }
  const StudyInputs inputs = prepare_study_inputs(spec, study_dir, device, log);
  int ran = 0;
  while (true) {
    store->fail_stale_trials(study.id, options.stale_seconds, spec.retries);
    std::optional<store::Trial> trial = store->claim_trial(study.id, worker_name);
    if (!trial) {
      if (store->trials(study.id, store::TrialState::Running).empty()) break;
      // Others are still running: one of them may die and leave its trial to re-queue.
      std::this_thread::sleep_for(std::chrono::duration<double>(std::min(1.0, options.heartbeat_seconds)));
      continue;
    }
    ++ran;
    const fs::path dir = study_dir / std::to_string(trial->number);
    fs::create_directories(dir);
    const std::string log_path = (dir / "trial.log").string();
    std::ofstream trial_log(log_path);
    trial_log << "trial " << trial->number << " (id " << trial->id << ", worker " << worker_name
              << "): " << describe_params(trial->params) << "\n";
    ParamSet params;
    for (const auto& param : trial->params) params.emplace_back(param.name, param_json(param));
    const auto started = std::chrono::steady_clock::now();
    store::TrialResult result;
    {
      Heartbeat heartbeat(options.store_url, trial->id, options.heartbeat_seconds);
      auto sink = store->metrics_sink(trial->id);
      RungJudge judge(*store, spec, study, *trial, trial_log);
      try {
        const TrialOutcome outcome = run_trial(spec, inputs, params, dir, trial_log, sink.get(), std::ref(judge));
        sink->flush();
        result = trial_result(spec, outcome, dir);
        store->add_artifact(trial->id, {"model", outcome.final_model, ""});
      } catch (const std::exception& error) {
        result = store::TrialResult{};
        result.state = store::TrialState::Fail;
        result.error = error.what();
        result.attrs["dir"] = dir.string();
        trial_log << "error: " << error.what() << "\n";
      }
    }
    trial_log.close();
    store->add_artifact(trial->id, {"log", log_path, ""});
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (!store->finish_trial(trial->id, result))
      log << "trial " << trial->number << ": declared stale meanwhile; its result was not recorded\n";
    std::ostringstream line;
    // The id beside the number: prime-db show and curves take the id.
    line << "trial " << trial->number << " (id " << trial->id << ") " << store::trial_state_name(result.state) << " ["
         << describe_params(trial->params) << "]";
    for (const auto& [name, value] : result.values) line << " " << name << " " << store::number_text(value);
    if (result.pruned_step) line << " at step " << *result.pruned_step;
    if (result.attrs.count("infeasible") && result.attrs["infeasible"] == "1") line << " (infeasible: " << result.attrs["violated"] << ")";
    if (!result.error.empty()) line << ": " << result.error;
    line << " (" << std::fixed << std::setprecision(1) << seconds << " s)";
    log << line.str() << "\n" << std::flush;
  }
  return ran;
}

void print_trials(const store::Study& study, const std::vector<store::Trial>& trials, std::ostream& out) {
  std::map<std::string, int> counts;
  for (const auto& trial : trials) ++counts[store::trial_state_name(trial.state)];
  out << "study " << study.name << ": " << trials.size() << " trial(s)";
  for (const auto& [state, count] : counts) out << ", " << count << " " << state;
  out << "\n";
  for (const auto& trial : trials) {
    out << std::setw(4) << trial.number << "  " << std::left << std::setw(8) << store::trial_state_name(trial.state)
        << std::right << " " << describe_params(trial.params);
    for (size_t i = 0; i < study.objectives.size() && i < trial.values.size(); ++i)
      if (trial.values[i]) out << "  " << study.objectives[i].name << " " << store::number_text(*trial.values[i]);
    if (trial.infeasible()) out << "  (infeasible)";
    if (trial.pruned_step) out << "  (pruned at step " << *trial.pruned_step << ")";
    if (!trial.error.empty()) out << "  error: " << trial.error.substr(0, 120);
    out << "\n";
  }
}

int run_search(const SweepOptions& options, std::ostream& out, std::ostream& log) {
  const SweepSpec spec = read_spec(options.spec_path);
  if (options.workers < 1) throw user_error("--workers must be >= 1");
  // Before anything is written: a sweep whose trials run on CUDA needs a GPU here.
  if (trial_device(spec, options) == "cuda" && !at::hasCUDA())
    throw user_error("the trials run on CUDA (", spec.train.contains("device") ? "the spec's train.device" : "--device",
                     ") but this machine has no CUDA device; nothing was written");
  const fs::path root = trials_root(options);
  auto store = store::Store::open(options.store_url);
  const store::Study study = prepare_study(*store, spec, options.enqueue, log);
  fs::create_directories(root / spec.study);
  int status = 0;
  if (options.workers == 1) {
    run_worker(spec, options, "", log);
  } else {
    // Worker processes: this program again (exec, not a bare fork: LibTorch's threads do not
    // survive fork), each on one GPU of CUDA_VISIBLE_DEVICES when trials run on CUDA.
    std::vector<std::string> gpus;
    if (trial_device(spec, options) == "cuda") {
      std::string visible = ::getenv("CUDA_VISIBLE_DEVICES") ? ::getenv("CUDA_VISIBLE_DEVICES") : "";
      if (visible.empty())
        for (int i = 0; i < static_cast<int>(at::getNumGPUs()); ++i) visible += (i ? "," : "") + std::to_string(i);
      std::stringstream list(visible);
      for (std::string gpu; std::getline(list, gpu, ',');) gpus.push_back(gpu);
      if (gpus.empty()) throw user_error("--workers ", options.workers, ": trials run on CUDA but no GPU is visible");
    }
    std::vector<pid_t> children;
    for (int i = 0; i < options.workers; ++i) {
      std::vector<std::string> args = options.argv;
      args.push_back("--worker-process");
      const pid_t pid = ::fork();
      if (pid < 0) throw user_error("cannot start worker ", i, ": fork failed");
      if (pid == 0) {
        if (!gpus.empty()) ::setenv("CUDA_VISIBLE_DEVICES", gpus[i % gpus.size()].c_str(), 1);
        std::vector<char*> raw;
        for (auto& arg : args) raw.push_back(arg.data());
        raw.push_back(nullptr);
        ::execv("/proc/self/exe", raw.data());
        std::perror("prime-search: exec of a worker failed");
        ::_exit(2);
      }
      children.push_back(pid);
    }
    for (const pid_t child : children) {
      int child_status = 0;
      while (::waitpid(child, &child_status, 0) < 0 && errno == EINTR) {
      }
      if (!WIFEXITED(child_status) || WEXITSTATUS(child_status) != 0) status = 1;
    }
    // A worker killed midway leaves its trial RUNNING; the survivors re-queue it once stale.
    // Whatever is still left (every worker died) runs here.
    run_worker(spec, options, "", log);
  }
  print_trials(study, store->trials(study.id), out);
  std::string objectives;
  for (const auto& objective : spec.objectives) objectives += (objectives.empty() ? "" : ",") + store::objective_text(objective);
  out << "Pareto front: prime-db --store " << store->database().display_url() << " pareto --study " << spec.study
      << " --objectives " << objectives << "\n";
  return status;
}

}  // namespace prime::search
