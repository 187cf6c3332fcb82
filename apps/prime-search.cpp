// prime-search: run a sweep spec's trials (convert → prime → eval) into an experiment store,
// on one or several worker processes; running it again resumes. Flags only: the loop is
// search::run_search (search/sweep/sweep.h).
#include <CLI/CLI.hpp>

#include <iostream>

#include "search/sweep/sweep.h"
#include "util/cli.h"
#include "util/cli_checks.h"

int main(int argc, char** argv) {
  using namespace prime::search;
  CLI::App app{"prime-search: sweep hybrid architectures (a spec's search space) into an experiment store"};
  SweepOptions options;
  bool worker_process = false;
  app.add_option("--spec", options.spec_path, "sweep spec (JSON; see templates/sweeps/)")->required()->group("Sweep");
  app.add_option("--store", options.store_url, "experiment store: an SQLite file or postgresql://...")
      ->required()->group("Sweep");
  app.add_option("--trials-dir", options.trials_dir,
                 "where trials write their models and logs (default: STORE.trials/; required with PostgreSQL)")
      ->group("Sweep");
  app.add_option("--workers", options.workers,
                 "worker processes on this machine (one per GPU of CUDA_VISIBLE_DEVICES on CUDA; default 1)")
      ->group("Workers");
  app.add_option("--device", options.device, "cpu, cuda or auto (default: cuda when present; a spec's train.device wins)")
      ->group("Workers");
  app.add_option("--heartbeat", options.heartbeat_seconds, "seconds between a running trial's heartbeats (default 5)")
      ->check(prime::positive_number())
      ->group("Workers");
  app.add_option("--stale-after", options.stale_seconds,
                 "seconds without a heartbeat before a running trial counts as dead: FAIL, re-queued (default 60)")
      ->group("Workers");
  app.add_flag("--worker-process", worker_process, "(internal) a worker started by another prime-search")
      ->group("");  // hidden from --help
  if (auto exit_code = prime::parse_command_line(app, "prime-search", argc, argv)) return *exit_code;

  int status = 0;
  const int exit_code = prime::run_command("prime-search", [&] {
    if (worker_process) {
      const SweepSpec spec = read_spec(options.spec_path);
      auto store = prime::store::Store::open(options.store_url);
      prepare_study(*store, spec, /*enqueue=*/false, std::cerr);
      store.reset();
      run_worker(spec, options, "", std::cerr);
      return;
    }
    // srun starts one process per task: the first enqueues, the others wait for its trials.
    if (const char* rank = ::getenv("SLURM_PROCID")) options.enqueue = std::string(rank) == "0";
    options.argv.assign(argv, argv + argc);
    status = run_search(options, std::cout, std::cerr);
  });
  return exit_code != 0 ? exit_code : status;
}
