#include "eval/mqar.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <numeric>

#include "util/error.h"

namespace prime::eval {
namespace {

constexpr uint64_t kMqarTag = 0x6D716172ull;  // "mqar"

}  // namespace

std::vector<ProbeSequence> mqar_sequences(const ProbeVocabulary& vocabulary, int64_t pairs, int64_t length,
                                          const MqarOptions& options) {
  if (pairs < 1) throw user_error("MQAR needs >= 1 pair, got ", pairs);
  const int64_t filler_length = length - 4 * pairs;
  if (filler_length < 0) throw user_error("MQAR with ", pairs, " pairs needs >= ", 4 * pairs, " tokens, got ", length);
  auto rng = cell_rng(options.seed, kMqarTag, static_cast<uint64_t>(pairs), static_cast<uint64_t>(length));
  std::vector<ProbeSequence> sequences;
  for (int64_t trial = 0; trial < options.trials; ++trial) {
    const auto filler = vocabulary.filler(filler_length, rng);
    const auto fresh = vocabulary.fresh_ids(2 * pairs, {filler.begin(), filler.end()}, rng);
    ProbeSequence sequence;
    auto& ids = sequence.ids;
    ids.insert(ids.end(), fresh.begin(), fresh.end());  // k1 v1 k2 v2 ... (fresh ids in any order)
    ids.insert(ids.end(), filler.begin(), filler.end());
    std::vector<int64_t> order(static_cast<size_t>(pairs));
    std::iota(order.begin(), order.end(), 0);
    for (int64_t i = pairs - 1; i > 0; --i) std::swap(order[i], order[uniform(rng, i + 1)]);  // Fisher-Yates
    for (int64_t pair : order) {
      sequence.positions.push_back(static_cast<int64_t>(ids.size()));
      sequence.targets.push_back(fresh[2 * pair + 1]);
      ids.push_back(fresh[2 * pair]);
      ids.push_back(fresh[2 * pair + 1]);
    }
    if (static_cast<int64_t>(ids.size()) != length) throw internal_error("MQAR sequence has ", ids.size(), " tokens");
    sequences.push_back(std::move(sequence));
  }
  return sequences;
}

MqarResult run_mqar(const LogitsFn& logits, const ProbeVocabulary& vocabulary, const MqarOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  MqarResult result;
  result.options = options;
  for (int64_t pairs : options.pairs) {
    for (int64_t length : options.lengths) {
      MqarCell cell;
      cell.pairs = pairs;
      cell.length = length;
      if (length < 4 * pairs) {
        cell.skipped = true;
        result.cells.push_back(cell);
        if (options.progress) options.progress(result.cells.size(), options.pairs.size() * options.lengths.size());
        continue;
      }
      const auto sequences = mqar_sequences(vocabulary, pairs, length, options);
      for (const auto& outcome : score_probes(logits, sequences, options.batch)) {
        ++cell.trials;
        cell.correct += outcome.correct;
        cell.total += outcome.total;
      }
      result.cells.push_back(cell);
      if (options.progress) options.progress(result.cells.size(), options.pairs.size() * options.lengths.size());
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

void print_mqar_table(const MqarResult& result, std::ostream& out) {
  const auto& options = result.options;
  out << "MQAR: query accuracy (" << options.trials << " trials per cell, seed " << options.seed << ")\n";
  out << std::setw(10) << "pairs";
  for (int64_t length : options.lengths) out << std::setw(9) << ("L=" + std::to_string(length));
  out << "\n";
  size_t index = 0;
  for (int64_t pairs : options.pairs) {
    out << std::setw(10) << pairs;
    for (size_t l = 0; l < options.lengths.size(); ++l, ++index) {
      const auto& cell = result.cells[index];
      char text[32];
      if (cell.skipped) std::snprintf(text, sizeof(text), "-");
      else std::snprintf(text, sizeof(text), "%.1f%%", 100 * cell.accuracy());
      out << std::setw(9) << text;
    }
    out << "\n";
  }
  if (std::any_of(result.cells.begin(), result.cells.end(), [](const MqarCell& cell) { return cell.skipped; }))
    out << "(-: a length below 4 x pairs holds no room for the pairs and their queries; not run)\n";
}

nlohmann::json to_json(const MqarResult& result) {
  nlohmann::json cells = nlohmann::json::array(), skipped = nlohmann::json::array();
  for (const auto& cell : result.cells) {
    if (cell.skipped) {
      skipped.push_back({{"pairs", cell.pairs}, {"length", cell.length}});  // length < 4 x pairs: not run
      continue;
    }
    cells.push_back({{"pairs", cell.pairs}, {"length", cell.length}, {"trials", cell.trials},
                     {"queries", cell.total}, {"correct", cell.correct}, {"accuracy", cell.accuracy()}});
  }
  return {{"trials", result.options.trials}, {"seed", result.options.seed}, {"seconds", result.seconds},
          {"cells", cells}, {"skipped", skipped}};
}

}  // namespace prime::eval
