// prime-select as a library call: load the teacher and the scoring sequences, run one scorer,
// write its per-layer scores as a CSV that prime-convert --scores reads, and report per ratio
// which layers stay attention and the predicted loss increase. prime-convert --select runs the
// same (or reuses the scores it kept).
#pragma once

#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "search/scorers/ratio_report.h"
#include "search/scorers/scorer.h"

namespace prime::search {

struct SelectOptions {
  std::string source;   // --source: a Transformer (directory, alias, HF id, synthetic:...)
  std::string scorer;   // --scorer
  std::string data;     // --data: a prime-data token shard (not read by the baselines)
  std::string out;      // --out: scores CSV (empty: not written)
  bool force = false;   // --force: replace --out
  std::string store;    // --store: experiment store URL (layer_scores table); empty: none
  std::string device = "cpu";
  std::string dtype = "fp32";
  ScorerSettings settings;
  // How messages name the flags: "--" (prime-select: --data, --window, --seq-len, --ratios) or
  // "--select-" (prime-convert: --select-data, ...; its ratio is --ratio).
  std::string flag_prefix = "--";
};

struct SelectOutcome {
  std::string source, scorer, device;
  int64_t num_layers = 0;
  ScorerResult result;
  double seconds = 0;  // the scorer's own time (loading excluded)
  std::vector<RatioChoice> ratios;
  std::string key;     // the settings line of the CSV: what the scores depend on
};

// Checks every option (UserError, before anything heavy is loaded), then scores. `log` gets
// progress lines (may be null).
SelectOutcome run_select(const SelectOptions& options, std::ostream* log);

// The table, the per-ratio choices and the cost, as prime-select prints them.
void print_select(const SelectOutcome& outcome, std::ostream& out);

// The CSV: '#' lines with the settings, cost and calibration, then `layer,score`.
std::string scores_csv(const SelectOutcome& outcome);

// The outcome's scores into the store's layer_scores table (one row per layer, each with the
// scorer's whole cost, device and settings line). Returns the store as it may be shown (no password).
std::string store_scores(const SelectOutcome& outcome, const std::string& url);
// Stored scores of (source, scorer) for every layer: those computed with `settings` (a settings
// line), or with empty settings those of the newest stored run, whatever they were. Of several
// runs with the same settings, the last. nullopt when some layer has none.
struct StoredScores {
  std::vector<double> scores;
  std::string settings;  // '' when the rows predate settings being recorded
  std::string where;     // the store, as it may be shown (no password)
};
std::optional<StoredScores> stored_scores(const std::string& url, const std::string& source, const std::string& scorer,
                                         int64_t num_layers, const std::string& settings);

// What a kept CSV says about itself: its settings line and calibration.
struct KeptScores {
  std::string key;
  std::vector<double> scores;
  std::optional<double> total_increase;
};
std::optional<KeptScores> read_kept_scores(const std::filesystem::path& path, int64_t num_layers);

// prime-convert --select NAME: the scores file its plan reads. With options.store, scores stored
// there for the source and scorer are reused, and new ones are stored. With `keep_path` the
// scores are kept there and reused when that file holds scores of the same source, scorer and
// settings; without it they go to a temporary file (`temporary` set; the caller removes it).
struct ConvertSelection {
  std::string path;
  bool temporary = false;
  bool reused = false;
};
ConvertSelection scores_for_convert(const SelectOptions& options, const std::string& keep_path, std::ostream& log);

}  // namespace prime::search
