#include "eval/needle.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>

#include "util/error.h"

namespace prime::eval {
namespace {

constexpr uint64_t kNeedleTag = 0x6E6565646C65ull;  // "needle"

uint64_t depth_bits(double depth) {
  uint64_t bits = 0;
  std::memcpy(&bits, &depth, sizeof(bits));
  return bits;
}

}  // namespace

std::vector<ProbeSequence> needle_sequences(const ProbeVocabulary& vocabulary, int64_t length, double depth,
                                            const NeedleOptions& options) {
  const int64_t k = options.key_tokens, v = options.value_tokens;
  if (k < 1 || v < 1) throw user_error("needle key and value need >= 1 token each");
  if (depth < 0 || depth > 1) throw user_error("needle depth ", depth, " is outside [0, 1]");
  const int64_t filler_length = length - 2 * (k + v) + 1;
  if (filler_length < 0)
    throw user_error("needle context ", length, " is shorter than key + value + query (", 2 * (k + v) - 1, ")");
  auto rng = cell_rng(options.seed, kNeedleTag, static_cast<uint64_t>(length), depth_bits(depth));
  const int64_t at = std::llround(depth * filler_length);
  std::vector<ProbeSequence> sequences;
  for (int64_t trial = 0; trial < options.trials; ++trial) {
    const auto filler = vocabulary.filler(filler_length, rng);
    const auto fresh = vocabulary.fresh_ids(k + v, {filler.begin(), filler.end()}, rng);
    const std::vector<int64_t> key(fresh.begin(), fresh.begin() + k), value(fresh.begin() + k, fresh.end());
    ProbeSequence sequence;
    auto& ids = sequence.ids;
    ids.insert(ids.end(), filler.begin(), filler.begin() + at);
    ids.insert(ids.end(), key.begin(), key.end());
    ids.insert(ids.end(), value.begin(), value.end());
    ids.insert(ids.end(), filler.begin() + at, filler.end());
    ids.insert(ids.end(), key.begin(), key.end());
    const int64_t last_key = static_cast<int64_t>(ids.size()) - 1;
    ids.insert(ids.end(), value.begin(), value.end() - 1);
    for (int64_t i = 0; i < v; ++i) {
      sequence.positions.push_back(last_key + i);
      sequence.targets.push_back(value[i]);
    }
    if (static_cast<int64_t>(ids.size()) != length) throw internal_error("needle sequence has ", ids.size(), " tokens");
    sequences.push_back(std::move(sequence));
  }
  return sequences;
}

NeedleResult run_needle(const LogitsFn& logits, const ProbeVocabulary& vocabulary, const NeedleOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  NeedleResult result;
  result.options = options;
  for (int64_t length : options.lengths) {
    for (double depth : options.depths) {
      const auto sequences = needle_sequences(vocabulary, length, depth, options);
      const auto outcomes = score_probes(logits, sequences, options.batch);
      NeedleCell cell;
      cell.length = length;
      cell.depth = depth;
      for (const auto& outcome : outcomes) {
        ++cell.trials;
        cell.exact += outcome.all_correct();
        cell.tokens_correct += outcome.correct;
        cell.tokens_total += outcome.total;
      }
      result.cells.push_back(cell);
      if (options.progress) options.progress(result.cells.size(), options.lengths.size() * options.depths.size());
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

void print_needle_table(const NeedleResult& result, std::ostream& out) {
  const auto& options = result.options;
  out << "needle in a haystack: exact-match accuracy (" << options.trials << " trials per cell, key "
      << options.key_tokens << " + value " << options.value_tokens << " tokens, seed " << options.seed << ")\n";
  out << std::setw(10) << "length";
  for (double depth : options.depths) {
    char label[32];
    std::snprintf(label, sizeof(label), "d=%.2f", depth);
    out << std::setw(9) << label;
  }
  out << std::setw(9) << "mean" << "\n";
  size_t index = 0;
  for (int64_t length : options.lengths) {
    out << std::setw(10) << length;
    double sum = 0;
    for (size_t d = 0; d < options.depths.size(); ++d, ++index) {
      const double accuracy = result.cells[index].accuracy();
      sum += accuracy;
      char cell[32];
      std::snprintf(cell, sizeof(cell), "%.1f%%", 100 * accuracy);
      out << std::setw(9) << cell;
    }
    char mean[32];
    std::snprintf(mean, sizeof(mean), "%.1f%%", options.depths.empty() ? 0.0 : 100 * sum / options.depths.size());
    out << std::setw(9) << mean << "\n";
  }
}

nlohmann::json to_json(const NeedleResult& result) {
  nlohmann::json cells = nlohmann::json::array();
  for (const auto& cell : result.cells)
    cells.push_back({{"length", cell.length}, {"depth", cell.depth}, {"trials", cell.trials},
                     {"exact", cell.exact}, {"accuracy", cell.accuracy()}, {"token_accuracy", cell.token_accuracy()}});
  return {{"key_tokens", result.options.key_tokens}, {"value_tokens", result.options.value_tokens},
          {"trials", result.options.trials}, {"seed", result.options.seed}, {"seconds", result.seconds},
          {"cells", cells}};
}

}  // namespace prime::eval
