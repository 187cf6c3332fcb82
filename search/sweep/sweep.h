// prime-search's loop: put the spec's trials in the store once, then workers claim them one at a
// time (one transaction each), run them (search/sweep/trial.h) with a heartbeat, apply early
// stopping at the eval points, and write each trial's values, state and artifacts back. Running
// the same command again resumes: waiting trials run, finished ones stay, a trial whose worker
// died (its heartbeat gone stale) is marked FAIL and re-queued up to the spec's `retries`.
#pragma once

#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "search/sweep/spec.h"
#include "store/store.h"

namespace prime::search {

struct SweepOptions {
  std::string spec_path;
  std::string store_url;
  std::string trials_dir;  // empty: <store file>.trials (SQLite); required for PostgreSQL
  int workers = 1;         // processes on this machine
  std::string device = "auto";  // cpu, cuda, auto (cuda when present); a spec's train.device wins
  double heartbeat_seconds = 5;
  double stale_seconds = 60;   // a RUNNING trial silent this long is FAIL (and re-queued)
  bool enqueue = true;         // false: a worker process started by another (or a non-lead srun rank)
  std::vector<std::string> argv;  // how this process was started (workers are started the same way)
};

// The trials directory for these options (see SweepOptions::trials_dir); UserError when none can
// be derived.
std::filesystem::path trials_root(const SweepOptions& options);

// Creates (or finds) the study and enqueues the spec's trials when it has none. UserError when the
// store holds a study of that name made by another spec.
store::Study prepare_study(store::Store& store, const SweepSpec& spec, bool enqueue, std::ostream& log);

// Claims and runs trials until none is waiting or running. Returns how many it ran. worker_name:
// what the store records as the trial's worker (empty: host:pid).
int run_worker(const SweepSpec& spec, const SweepOptions& options, const std::string& worker_name, std::ostream& log);

// The whole command: the spec, the store, `workers` processes (this one alone when 1), then the
// study's trials as a table. Returns the exit code (0; 1 when a worker process failed).
int run_search(const SweepOptions& options, std::ostream& out, std::ostream& log);

// One line per trial: number, state, parameters, objective values (what run_search prints).
void print_trials(const store::Study& study, const std::vector<store::Trial>& trials, std::ostream& out);

}  // namespace prime::search
