#include "search/scorers/select.h"

#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <sstream>

#include <unistd.h>

#include "convert/plan.h"
#include "data/token_shard.h"
#include "io/atomic_dir.h"
#include "io/source.h"
#include "model/load_model.h"
#include "store/database.h"
#include "store/store.h"
#include "util/cli.h"
#include "util/error.h"

namespace prime::search {
namespace {

std::string join_layers(const std::vector<int64_t>& layers) {
  std::string text;
  for (int64_t layer : layers) text += (text.empty() ? "" : ",") + std::to_string(layer);
  return text;
}

std::string number(double value) {
  std::ostringstream out;
  out << std::setprecision(9) << value;
  return out.str();
}

std::string joined(const std::vector<double>& values) {
  std::string text;
  for (double value : values) text += (text.empty() ? "" : ",") + number(value);
  return text;
}

// The settings line: everything the scores depend on (and nothing they do not, so a reused file
// is found again).
std::string settings_key(const SelectOptions& options, const ScorerInfo& scorer) {
  const ScorerSettings& s = options.settings;
  std::string key = "source=" + options.source + " scorer=" + scorer.name;
  if (!scorer.needs_data) return key + " ratio=" + s.ratios.at(0);
  // The shard as the kernel resolves it, so "w.tok", "./w.tok" and its absolute path are one key.
  std::error_code error;
  const std::filesystem::path data = std::filesystem::weakly_canonical(options.data, error);
  key += " data=" + (error ? options.data : data.string()) + " window=" + std::to_string(s.window) + " seq_len=" + std::to_string(s.seq_len) +
         " sequences=" + std::to_string(s.sequences) + " seed=" + std::to_string(s.seed) + " dtype=" + options.dtype;
  if (scorer.name == "swa-sensitivity")
    key += " probes=" + std::to_string(s.probes) + " probe_pairs=" + std::to_string(s.probe_pairs) +
           " recall_weight=" + number(s.recall_weight);
  if (scorer.trains) {
    key += " layer=" + s.layer + " lr=" + number(s.lr);
    key += scorer.name == "kl-restore" ? " restore_align_steps=" + std::to_string(s.restore_align_steps) +
                                             " restore_steps=" + std::to_string(s.restore_steps)
                                       : " align_steps=" + std::to_string(s.align_steps);
  }
  return key;
}

void check_options(const SelectOptions& options, const ScorerInfo& scorer) {
  const ScorerSettings& s = options.settings;
  if (options.source.find("+convert:") != std::string::npos)
    throw user_error("--source: prime-select scores the layers of a Transformer; give the source itself, not '",
                     options.source, "'");
  const std::string& f = options.flag_prefix;
  const std::string ratio_flag = f == "--" ? "--ratios" : "--ratio";
  if (s.ratios.empty()) throw user_error(ratio_flag, " is empty (expected e.g. 1:1,1:3,1:7)");
  for (const auto& ratio : s.ratios) convert::parse_ratio(ratio, ratio_flag);
  if (!scorer.needs_data) return;
  if (options.data.empty()) throw user_error(f, "data SHARD is required by scorer ", scorer.name);
  if (s.window < 1) throw user_error(f, "window must be at least 1, got ", s.window);
  if (s.seq_len < 2) throw user_error(f, "seq-len must be at least 2, got ", s.seq_len);
  if (s.window >= s.seq_len)
    throw user_error(f, "window ", s.window, " must be smaller than ", f, "seq-len ", s.seq_len,
                     " (no token would have context beyond the window)");
  if (s.sequences < 1) throw user_error("--sequences must be at least 1, got ", s.sequences);
  if (s.batch < 1) throw user_error("--batch must be at least 1, got ", s.batch);
  if (s.align_steps < 0 || s.restore_steps < 0 || s.restore_align_steps < 0)
    throw user_error("step counts (--align-steps, --restore-steps, --restore-align-steps) must be >= 0");
  if (!(s.lr > 0)) throw user_error("--lr must be positive, got ", s.lr);
  if (scorer.name == "swa-sensitivity") {
    if (s.probes < 1) throw user_error("--probes must be at least 1, got ", s.probes, " (swa-sensitivity's recall probe)");
    if (s.probe_pairs < 1) throw user_error("--probe-pairs must be at least 1, got ", s.probe_pairs);
    if (!(s.recall_weight >= 0) || !std::isfinite(s.recall_weight))
      throw user_error("--recall-weight must be a finite number >= 0, got ", s.recall_weight);
    // Filler of at least W tokens puts every query more than W tokens after its key and value.
    if (s.seq_len - 4 * s.probe_pairs < s.window)
      throw user_error("--window ", s.window, " is too large for the recall probe: every query must be more than W tokens "
                       "after its key, which needs --seq-len >= 4 x --probe-pairs + --window = ",
                       4 * s.probe_pairs + s.window, ", got ", s.seq_len, " (raise --seq-len, or lower --probe-pairs "
                       "or --window)");
  }
  if (scorer.trains) {
    const std::string layer = convert::parse_layer_type(s.layer);
    if (layer == "SWA") throw user_error("--layer SWA: ", scorer.name, " replaces layers with an SSM (GKA, GDN or M2)");
    if (parse_dtype_flag(options.dtype) != at::kFloat)
      throw user_error("--dtype ", options.dtype, ": ", scorer.name, " trains, and runs in fp32 only");
  }
}

// `count` windows of seq_len + 1 tokens, in batches of `batch`: inputs and next tokens.
void sample_batches(const io::TokenShard& shard, const ScorerSettings& s, int64_t count, uint64_t seed,
                    const at::Device& device, std::vector<at::Tensor>* inputs, std::vector<at::Tensor>* targets) {
  const at::Tensor windows = shard.sample_windows(count, s.seq_len + 1, seed);
  for (int64_t first = 0; first < count; first += s.batch) {
    const at::Tensor rows = windows.narrow(0, first, std::min(s.batch, count - first));
    inputs->push_back(rows.narrow(1, 0, s.seq_len).contiguous().to(device));
    if (targets) targets->push_back(rows.narrow(1, 1, s.seq_len).contiguous().to(device));
  }
}

}  // namespace

SelectOutcome run_select(const SelectOptions& options, std::ostream* log) {
  const ScorerInfo& scorer = find_scorer(options.scorer);
  check_options(options, scorer);
  // A store that cannot be opened (a missing directory, a read-only file, an unreachable server)
  // fails before the scoring, not after it.
  if (!options.store.empty()) store::Store::open(options.store);
  SelectOutcome outcome;
  outcome.source = options.source;
  outcome.scorer = scorer.name;
  outcome.key = settings_key(options, scorer);
  ScoringContext context;
  context.source = options.source;
  context.settings = options.settings;
  context.log = log;
  std::unique_ptr<model::HybridModel> teacher;
  std::optional<io::TokenShard> opened;
  if (scorer.needs_data) {
    const io::TokenShard& shard = opened.emplace(io::TokenShard::open(options.data));
    const ScorerSettings& s = options.settings;
    if (shard.size() <= s.window)
      throw user_error("--data ", options.data, " holds ", shard.size(), " tokens, not more than the window (--window ",
                       s.window, ")");
    if (shard.size() < s.seq_len + 1)
      throw user_error("--data ", options.data, " holds ", shard.size(), " tokens, fewer than one sequence of --seq-len ",
                       s.seq_len, " + 1");
    context.device = parse_device(options.device);
    model::LoadOptions load;
    load.device = context.device;
    load.dtype = parse_dtype_flag(options.dtype);
    teacher = model::load_model(options.source, load).model;
    for (const auto& symbol : teacher->config().layer_pattern)
      if (symbol != "*") throw user_error("--source ", options.source, " is already a hybrid (", symbol, " layers)");
    sample_batches(shard, s, s.sequences, s.seed, context.device, &context.inputs, &context.targets);
    for (const auto& ids : context.inputs) teacher->check_token_ids(ids.cpu());
    if (scorer.trains) {
      // Training windows are drawn with another seed than the scored ones.
      const int64_t train_windows = std::max<int64_t>(s.batch, 4 * s.sequences);
      sample_batches(shard, s, train_windows, s.seed + 0x5eed, context.device, &context.train_inputs, nullptr);
    }
    context.teacher = teacher.get();
    context.shard = &shard;
    context.num_layers = teacher->num_layers();
  } else {
    context.num_layers = io::resolve_source(options.source).config.num_hidden_layers;
  }
  outcome.num_layers = context.num_layers;
  outcome.device = context.device.str();
  const auto start = std::chrono::steady_clock::now();
  outcome.result = scorer.run(context);
  outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (static_cast<int64_t>(outcome.result.scores.size()) != context.num_layers)
    throw internal_error(scorer.name, " returned ", outcome.result.scores.size(), " scores for ", context.num_layers,
                         " layers");
  const std::string placement = scorer.needs_data ? "" : scorer.name;
  outcome.ratios = choose_ratios(outcome.result.scores, outcome.result.cost, outcome.result.total_increase,
                                 options.settings.ratios, placement);
  return outcome;
}

void print_select(const SelectOutcome& outcome, std::ostream& out) {
  const ScorerResult& result = outcome.result;
  out << outcome.scorer << " on " << outcome.source << " (" << outcome.num_layers << " layers): " << result.detail
      << "\n";
  out << "layer  score (higher = safer to replace)";
  if (!result.cost.empty()) out << "  cost [" << result.cost_unit << "]";
  for (const auto& [name, values] : result.columns) out << "  " << name;
  out << "\n";
  for (int64_t layer = 0; layer < outcome.num_layers; ++layer) {
    out << std::setw(5) << layer << "  " << std::setw(12) << number(result.scores[layer]);
    if (!result.cost.empty()) out << "  " << std::setw(12) << number(result.cost[layer]);
    for (const auto& [name, values] : result.columns) out << "  " << std::setw(12) << number(values[layer]);
    out << "\n";
  }
  for (const auto& choice : outcome.ratios) {
    out << "ratio " << choice.ratio << ": attention layers " << join_layers(choice.kept);
    if (choice.predicted) {
      // Four decimals; what rounds to zero prints as 0.0000, not -0.0000.
      const double predicted = std::fabs(*choice.predicted) < 5e-5 ? 0.0 : *choice.predicted;
      out << "; predicted NLL increase " << std::fixed << std::setprecision(4) << predicted << " nats/token (PPL x"
          << std::setprecision(3) << std::exp(predicted) << ")" << std::defaultfloat;
    }
    out << "\n";
  }
  if (result.total_increase)
    out << "calibration: NLL increase with every layer replaced, measured: " << number(*result.total_increase)
        << " nats/token\n";
  out << "cost: " << std::fixed << std::setprecision(2) << outcome.seconds << " s on " << outcome.device
      << std::defaultfloat << "\n";
}

std::string scores_csv(const SelectOutcome& outcome) {
  std::ostringstream csv;
  csv << "# prime-select per-layer scores (higher = safer to replace); prime-convert --scores reads this file\n";
  csv << "# " << outcome.key << "\n";
  csv << "# cost_seconds=" << number(outcome.seconds) << " device=" << outcome.device << "\n";
  csv << "# total_increase=" << (outcome.result.total_increase ? number(*outcome.result.total_increase) : "none")
      << " cost_unit=" << outcome.result.cost_unit << "\n";
  // The measured terms behind the score, one line each (comment lines: --scores reads only the
  // score column).
  if (!outcome.result.cost.empty()) csv << "# cost=" << joined(outcome.result.cost) << "\n";
  for (const auto& [name, values] : outcome.result.columns) csv << "# " << name << "=" << joined(values) << "\n";
  csv << "layer,score\n";
  for (int64_t layer = 0; layer < outcome.num_layers; ++layer)
    csv << layer << "," << number(outcome.result.scores[layer]) << "\n";
  return csv.str();
}

std::optional<KeptScores> read_kept_scores(const std::filesystem::path& path, int64_t num_layers) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream content;
  content << in.rdbuf();
  KeptScores kept;
  std::string line;
  std::istringstream lines(content.str());
  for (int index = 0; std::getline(lines, line) && index < 4; ++index) {
    if (index == 1 && line.rfind("# ", 0) == 0) kept.key = line.substr(2);
    const auto at = line.find("# total_increase=");
    if (at == 0) {
      const std::string value = line.substr(17, line.find(' ', 17) - 17);
      if (value != "none") kept.total_increase = std::stod(value);
    }
  }
  kept.scores = convert::parse_layer_scores(content.str(), num_layers, path.string()).scores;
  return kept;
}

std::string store_scores(const SelectOutcome& outcome, const std::string& url) {
  std::vector<store::LayerScore> rows;
  for (int64_t layer = 0; layer < outcome.num_layers; ++layer)
    rows.push_back({outcome.source, outcome.scorer, layer, outcome.result.scores[layer], outcome.seconds, outcome.device,
                    outcome.key});
  // The measured terms behind the score as rows of their own, under "SCORER/TERM".
  auto add_term = [&](const std::string& term, const std::vector<double>& values) {
    for (int64_t layer = 0; layer < outcome.num_layers; ++layer)
      if (std::isfinite(values.at(layer)))  // a layer a scorer did not measure has no row
        rows.push_back({outcome.source, outcome.scorer + "/" + term, layer, values.at(layer), outcome.seconds,
                        outcome.device, outcome.key});
  };
  if (!outcome.result.cost.empty()) add_term("cost", outcome.result.cost);
  for (const auto& [name, values] : outcome.result.columns) add_term(name, values);
  const auto store = store::Store::open(url);
  store->add_layer_scores(rows);
  return store->database().display_url();
}

std::optional<StoredScores> stored_scores(const std::string& url, const std::string& source, const std::string& scorer,
                                         int64_t num_layers, const std::string& settings) {
  const auto store = store::Store::open(url);
  const auto rows = store->layer_scores(source, scorer);
  StoredScores stored;
  stored.where = store->database().display_url();
  if (!settings.empty()) {
    stored.settings = settings;
  } else {  // the newest run's
    int64_t newest = -1;
    for (const auto& row : rows)
      if (row.id > newest) newest = row.id, stored.settings = row.settings;
  }
  // Rows come ordered by layer, then id: of several runs with these settings, the last is kept.
  std::vector<std::optional<double>> by_layer(num_layers);
  for (const auto& row : rows)
    if (row.settings == stored.settings && row.layer >= 0 && row.layer < num_layers) by_layer[row.layer] = row.score;
  for (const auto& score : by_layer) {
    if (!score) return std::nullopt;
    stored.scores.push_back(*score);
  }
  return stored;
}

ConvertSelection scores_for_convert(const SelectOptions& options, const std::string& keep_path, std::ostream& log) {
  const ScorerInfo& scorer = find_scorer(options.scorer);
  ConvertSelection selection;
  const int64_t layers = io::resolve_source(options.source).config.num_hidden_layers;
  auto temporary_path = [&] {
    return (std::filesystem::temp_directory_path() /
            ("prime-select-" + scorer.name + "-" + std::to_string(::getpid()) + ".csv"))
        .string();
  };
  if (!options.store.empty() && scorer.needs_data) {
    // Given data, only scores computed with these very settings count; without, the newest stored.
    const std::string wanted = options.data.empty() ? "" : settings_key(options, scorer);
    if (const auto stored = stored_scores(options.store, options.source, scorer.name, layers, wanted)) {
      const std::string settings = stored->settings.empty() ? "settings not recorded" : stored->settings;
      log << "--select " << scorer.name << ": reusing the scores stored in " << stored->where << " (" << settings
          << ")\n";
      std::string csv = "# scores of " + scorer.name + " from " + stored->where + " (" + settings + ")\nlayer,score\n";
      for (int64_t layer = 0; layer < layers; ++layer) csv += std::to_string(layer) + "," + number(stored->scores[layer]) + "\n";
      selection = {keep_path.empty() ? temporary_path() : keep_path, keep_path.empty(), true};
      io::write_file_atomically(selection.path, csv, true, "--select");
      return selection;
    }
  }
  check_options(options, scorer);  // stored scores need no data; anything else does
  if (!keep_path.empty()) {
    selection.path = keep_path;
    if (std::filesystem::exists(keep_path)) {
      const auto kept = read_kept_scores(keep_path, layers);
      if (kept && kept->key == settings_key(options, scorer)) {
        log << "--select " << scorer.name << ": reusing the scores in " << keep_path << "\n";
        selection.reused = true;
        return selection;
      }
    }
  } else {
    selection.path = temporary_path();
    selection.temporary = true;
  }
  const SelectOutcome outcome = run_select(options, nullptr);
  print_select(outcome, log);
  if (!options.store.empty()) store_scores(outcome, options.store);
  io::write_file_atomically(selection.path, scores_csv(outcome), true, "--select");
  if (!selection.temporary) log << "--select " << scorer.name << ": scores kept in " << selection.path << "\n";
  return selection;
}

}  // namespace prime::search
