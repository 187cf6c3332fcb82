// One trial, in its own directory: convert the source in-process (lib/convert), run the spec's
// stages one after the other (lib/train's run_training, each from the previous stage's final
// checkpoint), then evaluate (lib/eval): perplexity on the validation shard, recall probes,
// decode tokens/s and state bytes. The same library calls as prime-convert, prime-train and
// prime-eval, with the trial's parameters filled in.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "convert/conversion_plan.h"
#include "search/sweep/sampler.h"
#include "search/sweep/spec.h"
#include "train/train_options.h"
#include "util/metrics.h"

namespace prime::search {

// What every trial of a study shares, resolved once per worker.
struct StudyInputs {
  std::string source;   // the converted source (the pretrained one when the spec pretrains)
  std::string teacher;  // the frozen teacher of align / distill
  std::vector<std::string> train_data;
  std::string val_data;  // empty: none
  std::string device = "cpu";
};

// Called as training goes, after each step and eval record (steps and tokens counted over all
// stages), with the latest value of every metric; returning true stops the trial there.
using PruneCheck = std::function<bool(const MetricRecord& record, const std::map<std::string, double>& latest)>;

// Thrown through run_training when the prune check says stop (caught by run_trial).
struct TrialPruned : std::runtime_error {
  explicit TrialPruned(int64_t step) : std::runtime_error("pruned"), step(step) {}
  int64_t step;
};

struct TrialOutcome {
  bool pruned = false;
  int64_t pruned_step = 0;                 // steps over all stages when it stopped
  std::map<std::string, double> measured;  // measured_names(spec) that were measured
  std::string final_model;                 // the directory evaluated
};

// The conversion and every stage's prime-train options for these parameters, in `dir`.
convert::ConvertOptions trial_convert_options(const SweepSpec& spec, const StudyInputs& inputs, const ParamSet& params,
                                              const std::filesystem::path& dir);
std::vector<train::TrainOptions> trial_stage_options(const SweepSpec& spec, const StudyInputs& inputs,
                                                     const ParamSet& params, const std::filesystem::path& dir);

// Runs the trial in `dir` (emptied first: a re-queued trial starts over). Every training record
// goes to `sink` with steps and tokens counted over all stages. A failure is an exception.
TrialOutcome run_trial(const SweepSpec& spec, const StudyInputs& inputs, const ParamSet& params,
                       const std::filesystem::path& dir, std::ostream& log, MetricsSink* sink, const PruneCheck& prune);

}  // namespace prime::search
