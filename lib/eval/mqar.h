// Multi-query associative recall (MQAR, as in Zoology): N key/value pairs of fresh ids, a gap of
// filler, then every key again in a random order, each followed (teacher-forced) by its value:
//
//   k1 v1 k2 v2 ... kN vN | filler (L - 4N tokens) | kp1 vp1 kp2 vp2 ... kpN vpN
//
// The model must predict each query's value at the query key's position; accuracy is the share
// of the N x trials queries answered by the argmax. Keys and values are distinct and never occur
// in the filler; chance is about 1 / pool_size. Cells with L < 4N are skipped.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include <nlohmann/json.hpp>

#include <functional>

#include "eval/probe_common.h"

namespace prime::eval {

struct MqarOptions {
  std::vector<int64_t> pairs = {4, 16, 64};
  std::vector<int64_t> lengths = {256, 1024};
  int64_t trials = 10;
  uint64_t seed = 0;
  int64_t batch = 4;
  std::function<void(size_t cells_done, size_t cells_total)> progress;  // after each cell
};

struct MqarCell {
  int64_t pairs = 0, length = 0;
  int64_t trials = 0, correct = 0, total = 0;  // total = pairs x trials queries
  bool skipped = false;                        // length < 4 * pairs
  double accuracy() const { return total ? double(correct) / total : 0; }
};

struct MqarResult {
  MqarOptions options;
  std::vector<MqarCell> cells;  // pairs x lengths, row-major
  double seconds = 0;
};

std::vector<ProbeSequence> mqar_sequences(const ProbeVocabulary& vocabulary, int64_t pairs, int64_t length,
                                          const MqarOptions& options);

MqarResult run_mqar(const LogitsFn& logits, const ProbeVocabulary& vocabulary, const MqarOptions& options);

void print_mqar_table(const MqarResult& result, std::ostream& out);
nlohmann::json to_json(const MqarResult& result);

}  // namespace prime::eval
