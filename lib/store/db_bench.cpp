// prime-db bench: fills a store with a synthetic study (trials x metrics x steps) unless it
// already holds one, then times the interactive queries and the per-step cost of logging
// metrics through the batched MetricsSink.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <ostream>
#include <random>
#include <sstream>
#include <thread>

#include "store/database.h"
#include "store/db_commands.h"
#include "util/error.h"

namespace prime::store {
namespace {

template <typename Body>
double seconds_of(Body&& body) {
  const auto start = std::chrono::steady_clock::now();
  body();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void generate(Store& store, const std::string& name, int64_t trials, int metrics, int steps, std::ostream& log) {
  const Study study = store.create_study(
      {name, {{"val_ppl", Direction::Minimize}, {"decode_tok_s", Direction::Maximize}, {"state_bytes", Direction::Minimize}},
       "{}", {}});
  const char* layers[] = {"GKA", "GDN", "M2"};
  const char* ratios[] = {"1:1", "1:3", "1:7"};
  std::mt19937_64 random(7);
  std::uniform_real_distribution<double> unit(0, 1);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t done = 0; done < trials; done += 1000) {
    std::vector<std::vector<TrialParam>> params;
    for (int64_t index = done; index < std::min(trials, done + 1000); ++index)
      params.push_back({{"layer", layers[index % 3], "categorical"}, {"ratio", ratios[(index / 3) % 3], "categorical"},
                        {"lr", std::to_string(1e-4 * (1 + index % 30)), "float"}});
    store.enqueue_trials(study.id, params);
    while (auto trial = store.claim_trial(study.id, "bench")) {
      std::vector<Store::MetricRow> rows;
      rows.reserve(static_cast<size_t>(metrics) * steps);
      for (int metric = 0; metric < metrics; ++metric)
        for (int step = 0; step < steps; ++step)
          rows.push_back({"metric_" + std::to_string(metric), step * 10, 5.0 / (1 + step) + unit(random)});
      store.log_metrics(trial->id, rows);
      store.finish_trial(trial->id, {TrialState::Complete,
                                     {{"val_ppl", 10 + 20 * unit(random)},
                                      {"decode_tok_s", 500 + 1500 * unit(random)},
                                      {"state_bytes", std::round(1e6 * (1 + 63 * unit(random)))}},
                                     {},
                                     std::nullopt,
                                     ""});
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log << "  generated " << std::min(trials, done + 1000) << "/" << trials << " trials (" << std::fixed << std::setprecision(0)
        << elapsed << " s)\n"
        << std::flush;
  }
}

}  // namespace

void run_store_bench(Store& store, int64_t trials, int metrics, int steps, std::ostream& out) {
  const std::string name = "bench";
  if (!store.find_study(name)) {
    out << "filling " << store.database().display_url() << " with study 'bench': " << trials << " trials x " << metrics << " metrics x " << steps
        << " steps\n";
    generate(store, name, trials, metrics, steps, out);
  }
  const Study study = store.study(name);
  std::ostringstream sink;
  std::vector<Trial> listed;
  const double trials_s = seconds_of([&] { listed = store.trials(study.id); });
  const double trials_print_s = seconds_of([&] { print_trials(store, name, std::nullopt, sink); });
  const double pareto_s = seconds_of([&] {
    print_pareto(pareto_table(store, name, {study.objectives[0], study.objectives[1]}, false), sink);
  });
  const double pareto3_s = seconds_of([&] { print_pareto(pareto_table(store, name, study.objectives, false), sink); });
  std::mt19937_64 random(11);
  const int curve_samples = 100;
  size_t points = 0;
  // A metric the study has (metric_3 when there are four or more).
  const std::string curve_metric = "metric_" + std::to_string(std::min(3, std::max(0, metrics - 1)));
  const double curves_s = seconds_of([&] {
    for (int sample = 0; sample < curve_samples; ++sample)
      points += store.curve(listed[random() % listed.size()].id, curve_metric).size();
  });
  std::vector<IntermediateValue> rung;
  const double rung_s = seconds_of([&] { rung = store.intermediate_values(study.id, "metric_0", 500); });
  out << std::fixed << std::setprecision(3) << store.backend() << " store " << store.database().display_url() << ", study 'bench' with "
      << listed.size() << " trials:\n"
      << "  trials (load)              " << trials_s << " s\n"
      << "  trials (prime-db table)    " << trials_print_s << " s\n"
      << "  pareto, 2 objectives       " << pareto_s << " s\n"
      << "  pareto, 3 objectives       " << pareto3_s << " s\n"
      << "  curves, one metric         " << 1e3 * curves_s / curve_samples << " ms per curve (" << points / curve_samples
      << " points)\n"
      << "  intermediate values @500   " << rung_s << " s (" << rung.size() << " trials)\n";

  // Logging: a record of 6 values per training step through the default sink, first back to
  // back (the sink's whole cost per record, flushes included), then paced like a tiny CPU
  // training step (20 ms, slept) to see what a step pays: appends, plus a time-triggered flush
  // every few seconds.
  const Study logging = store.create_study({"bench_logging", {{"loss", Direction::Minimize}}, "{}", {}});
  const MetricRecord step_record{
      "step", 0, {{"loss", 3.0}, {"lr", 1e-3}, {"grad_norm", 1.0}, {"tok_s", 1e4}, {"step_s", 0.1}, {"mem_gb", 1}}, {}};
  const auto logged_trial = [&] {
    const int64_t trial_id = store.enqueue_trial(logging.id, {});
    store.claim_trial(logging.id, "bench");
    return trial_id;
  };
  const int64_t burst_trial = logged_trial();
  const int records = 20000;
  const double burst_s = seconds_of([&] {
    auto metrics_sink = store.metrics_sink(burst_trial);
    MetricRecord record = step_record;
    for (record.step = 0; record.step < records; ++record.step) metrics_sink->write(record);
    metrics_sink->flush();
  });
  store.finish_trial(burst_trial, {TrialState::Complete, {{"loss", 3.0}}, {}, std::nullopt, ""});

  const int64_t paced_trial = logged_trial();
  const auto step_time = std::chrono::milliseconds(20);
  const int paced_steps = 600;
  double paced_s = 0, worst_s = 0;
  {
    auto metrics_sink = store.metrics_sink(paced_trial);
    MetricRecord record = step_record;
    auto next = std::chrono::steady_clock::now();
    for (record.step = 0; record.step < paced_steps; ++record.step) {
      next += step_time;
      std::this_thread::sleep_until(next);
      const double seconds = seconds_of([&] { metrics_sink->write(record); });
      paced_s += seconds;
      worst_s = std::max(worst_s, seconds);
    }
    paced_s += seconds_of([&] { metrics_sink->flush(); });
  }
  store.finish_trial(paced_trial, {TrialState::Complete, {{"loss", 3.0}}, {}, std::nullopt, ""});
  const double step_s = std::chrono::duration<double>(step_time).count();
  out << "  metric logging, back to back " << std::setprecision(2) << 1e6 * burst_s / records
      << " us per step (6 values per step, " << records << " steps)\n"
      << "  metric logging, 20 ms steps  " << 1e6 * paced_s / paced_steps << " us per step = " << std::setprecision(3)
      << 100 * paced_s / paced_steps / step_s << " % of the step (" << paced_steps << " steps; slowest write "
      << std::setprecision(1) << 1e3 * worst_s << " ms, a flush)\n";
}

}  // namespace prime::store
