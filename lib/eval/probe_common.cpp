#include "eval/probe_common.h"

#include <algorithm>
#include <map>

#include "util/error.h"

namespace prime::eval {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

std::mt19937_64 cell_rng(uint64_t seed, uint64_t tag, uint64_t a, uint64_t b) {
  return std::mt19937_64(splitmix64(splitmix64(splitmix64(splitmix64(seed) ^ tag) ^ a) ^ b));
}

int64_t uniform(std::mt19937_64& rng, int64_t n) { return static_cast<int64_t>(rng() % static_cast<uint64_t>(n)); }

std::vector<ProbeOutcome> score_probes(const LogitsFn& logits_fn, const std::vector<ProbeSequence>& sequences,
                                       int64_t batch) {
  std::vector<ProbeOutcome> outcomes(sequences.size());
  // Group by length, keep order inside a group.
  std::map<size_t, std::vector<size_t>> by_length;
  for (size_t i = 0; i < sequences.size(); ++i) by_length[sequences[i].ids.size()].push_back(i);
  for (const auto& [length, members] : by_length) {
    for (size_t first = 0; first < members.size(); first += static_cast<size_t>(batch)) {
      const size_t count = std::min(members.size() - first, static_cast<size_t>(batch));
      at::Tensor ids = at::empty({static_cast<int64_t>(count), static_cast<int64_t>(length)}, at::kLong);
      std::vector<int64_t> rows, positions, targets;
      for (size_t r = 0; r < count; ++r) {
        const auto& sequence = sequences[members[first + r]];
        std::copy(sequence.ids.begin(), sequence.ids.end(), ids[r].data_ptr<int64_t>());
        for (size_t k = 0; k < sequence.positions.size(); ++k) {
          rows.push_back(static_cast<int64_t>(r));
          positions.push_back(sequence.positions[k]);
          targets.push_back(sequence.targets[k]);
        }
      }
      const at::Tensor logits = logits_fn(ids);
      const at::Tensor row_index = at::tensor(rows, at::kLong).to(logits.device());
      const at::Tensor position_index = at::tensor(positions, at::kLong).to(logits.device());
      // Only the probed positions' logits are reduced (not the whole [B, T, V]).
      const at::Tensor predicted = logits.index({row_index, position_index}).argmax(-1).cpu();
      const auto predicted_ids = predicted.accessor<int64_t, 1>();
      for (size_t k = 0; k < rows.size(); ++k) {
        auto& outcome = outcomes[members[first + static_cast<size_t>(rows[k])]];
        outcome.correct += predicted_ids[static_cast<int64_t>(k)] == targets[k];
        ++outcome.total;
      }
    }
  }
  return outcomes;
}

ProbeVocabulary::ProbeVocabulary(const io::TokenShard* shard, int64_t vocab_size, uint64_t seed)
    : shard_(shard), vocab_size_(vocab_size) {
  if (vocab_size < 2) throw internal_error("probe vocabulary needs vocab_size >= 2");
  if (!shard) return;
  if (shard->header().kind != io::ShardKind::kTokens)
    throw user_error(shard->path().string(), " holds position ids, not tokens");
  if (shard->size() < 2) throw user_error(shard->path().string(), " is too small to draw filler from");
  const int64_t window = std::min<int64_t>(shard->size(), 16384);
  const at::Tensor sample = shard->sample_windows(16, window, seed ^ 0x5EEDull).flatten();
  std::vector<int64_t> distinct(sample.data_ptr<int64_t>(), sample.data_ptr<int64_t>() + sample.numel());
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  // A shard id the model cannot embed would make every probe fail: refuse up front.
  if (distinct.back() >= vocab_size)
    throw user_error(shard->path().string(), " has id ", distinct.back(), " but the model's vocabulary is ",
                     vocab_size, ": use a model whose vocab covers the tokenizer");
  for (int64_t id : distinct)
    if (!(shard->header().has_eos() && id == shard->header().eos_id)) pool_.push_back(id);
  if (pool_.size() < 16) throw user_error(shard->path().string(), ": too few distinct ids to draw probes from");
}

std::vector<int64_t> ProbeVocabulary::filler(int64_t length, std::mt19937_64& rng) const {
  std::vector<int64_t> ids(static_cast<size_t>(length));
  if (length == 0) return ids;
  if (shard_) {
    if (length > shard_->size())
      throw user_error(shard_->path().string(), " has ", shard_->size(), " tokens, fewer than the ", length,
                       " of filler a probe needs");
    const int64_t offset = uniform(rng, shard_->size() - length + 1);
    std::vector<uint32_t> raw(static_cast<size_t>(length));
    shard_->read(offset, length, raw.data());
    std::copy(raw.begin(), raw.end(), ids.begin());
    return ids;
  }
  for (auto& id : ids) id = uniform(rng, vocab_size_);
  return ids;
}

std::vector<int64_t> ProbeVocabulary::fresh_ids(int64_t n, const std::unordered_set<int64_t>& avoid,
                                                std::mt19937_64& rng) const {
  const int64_t pool = pool_size();
  int64_t available = 0;
  for (int64_t i = 0; i < pool && available < n + 1; ++i) available += !avoid.count(pool_.empty() ? i : pool_[i]);
  if (available < n)
    throw user_error("probe needs ", n, " distinct ids outside its filler but only ", available,
                     " are available: use a larger vocabulary or a shorter context");
  std::unordered_set<int64_t> taken;
  std::vector<int64_t> ids;
  while (static_cast<int64_t>(ids.size()) < n) {
    const int64_t draw = uniform(rng, pool);
    const int64_t id = pool_.empty() ? draw : pool_[draw];
    if (avoid.count(id) || !taken.insert(id).second) continue;
    ids.push_back(id);
  }
  return ids;
}

}  // namespace prime::eval
