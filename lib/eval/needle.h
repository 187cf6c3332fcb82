// Needle in a haystack, at the token level: a key/value pair of fresh ids is hidden at depth d of
// L tokens of filler (real text from a shard, or random ids), and the key is repeated at the end;
// the model must continue it with the value. Layout of one sequence of exactly L tokens:
//
//   filler[0, at) | key value | filler[at, F) | key value[0 .. v-2]
//
// with F = L - 2(k + v) + 1 filler tokens and at = round(d * F) (d = 0: the needle opens the
// context; d = 1: it sits right before the query). The value is read teacher-forced at the last
// k + v - 1 positions; a trial counts when all v value tokens are the argmax. Probe ids never
// occur in their own filler, so the answer is unambiguous to a model that looks the key up;
// chance is about pool_size^-v.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include <nlohmann/json.hpp>

#include <functional>

#include "eval/probe_common.h"

namespace prime::eval {

struct NeedleOptions {
  std::vector<int64_t> lengths = {256, 1024};
  std::vector<double> depths = {0.0, 0.25, 0.5, 0.75, 1.0};
  int64_t trials = 10;
  int64_t key_tokens = 4, value_tokens = 4;
  uint64_t seed = 0;
  int64_t batch = 4;
  std::function<void(size_t cells_done, size_t cells_total)> progress;  // after each cell
};

struct NeedleCell {
  int64_t length = 0;
  double depth = 0;
  int64_t trials = 0, exact = 0, tokens_correct = 0, tokens_total = 0;
  double accuracy() const { return trials ? double(exact) / trials : 0; }
  double token_accuracy() const { return tokens_total ? double(tokens_correct) / tokens_total : 0; }
};

struct NeedleResult {
  NeedleOptions options;
  std::vector<NeedleCell> cells;  // lengths x depths, row-major
  double seconds = 0;
};

// The trials of one cell; the same (options.seed, length, depth) always gives the same sequences.
std::vector<ProbeSequence> needle_sequences(const ProbeVocabulary& vocabulary, int64_t length, double depth,
                                            const NeedleOptions& options);

NeedleResult run_needle(const LogitsFn& logits, const ProbeVocabulary& vocabulary, const NeedleOptions& options);

void print_needle_table(const NeedleResult& result, std::ostream& out);
nlohmann::json to_json(const NeedleResult& result);

}  // namespace prime::eval
