// What the recall probes (needle, MQAR) share: seeded filler, fresh probe ids, and teacher-forced
// scoring. A probe sequence is the whole input (the answer tokens included); the model must
// predict targets[i] from the logits at positions[i]. With teacher forcing one forward scores a
// multi-token answer, and a model that copies perfectly gets every target right.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <random>
#include <unordered_set>
#include <vector>

#include "eval/logits_fn.h"
#include "data/token_shard.h"

namespace prime::eval {

struct ProbeSequence {
  std::vector<int64_t> ids;
  std::vector<int64_t> positions;  // where the prediction is read
  std::vector<int64_t> targets;    // what it must be (ids[position + 1])
};

struct ProbeOutcome {
  int64_t correct = 0, total = 0;
  bool all_correct() const { return correct == total; }
};

// Greedy (argmax) predictions at each sequence's positions; sequences of equal length are run
// `batch` at a time.
std::vector<ProbeOutcome> score_probes(const LogitsFn& logits, const std::vector<ProbeSequence>& sequences,
                                       int64_t batch);

// A stream for one grid cell: depends only on (seed, probe tag, a, b), so adding cells to a grid
// never changes the others.
std::mt19937_64 cell_rng(uint64_t seed, uint64_t tag, uint64_t a, uint64_t b);
// Uniform in [0, n) without std::uniform_int_distribution (whose draws differ between standard
// libraries).
int64_t uniform(std::mt19937_64& rng, int64_t n);

// Where filler and probe ids come from. With a shard: filler is a random window of real text and
// probe ids are drawn from the ids seen in a seeded sample of it (never EOS). Without: filler
// and probe ids are uniform over [0, vocab_size).
class ProbeVocabulary {
 public:
  ProbeVocabulary(const io::TokenShard* shard, int64_t vocab_size, uint64_t seed);
  std::vector<int64_t> filler(int64_t length, std::mt19937_64& rng) const;
  // n distinct ids, none of them in `avoid` (so a probe id never also occurs in its filler).
  // UserError when the pool is too small.
  std::vector<int64_t> fresh_ids(int64_t n, const std::unordered_set<int64_t>& avoid, std::mt19937_64& rng) const;
  int64_t pool_size() const { return pool_.empty() ? vocab_size_ : static_cast<int64_t>(pool_.size()); }

 private:
  const io::TokenShard* shard_;
  int64_t vocab_size_;
  std::vector<int64_t> pool_;  // empty: all of [0, vocab_size)
};

}  // namespace prime::eval
