// Training batches from prime-data token shards. A stream shard is cut into windows of seq_len + 1
// tokens every seq_len tokens (inputs = the first seq_len, targets = the last seq_len); a packed
// shard (row_length == seq_len) gives one sequence per row (targets = the row shifted by one, the
// last position unscored), with document positions from its positions shard when one exists.
// Sequences are visited in a seeded order, reshuffled every epoch; each data-parallel rank takes
// its own slice of every global micro-batch. The state is one number, the global count of
// sequences consumed, so a checkpoint resumes the data exactly.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "data/token_shard.h"

namespace prime::train {

struct DataOptions {
  std::vector<std::string> shards;
  int64_t seq_len = 0;
  int64_t sequences_per_micro_batch = 1;  // per rank
  uint64_t seed = 0;
  int64_t rank = 0, world = 1;
};

struct Batch {
  at::Tensor input_ids;  // [B, L] int64
  at::Tensor targets;    // [B, L] int64, kIgnoreTarget where nothing is scored
  at::Tensor positions;  // [B, L] int64 position in document, or undefined (one document per row)
};

class TrainData {
 public:
  // UserError for missing/bad shards, a positions shard given as data, mixed or mismatched row
  // lengths, or fewer sequences than one global micro-batch.
  explicit TrainData(DataOptions options);

  int64_t sequences() const { return static_cast<int64_t>(index_.size()); }
  int64_t vocab_size() const { return vocab_size_; }  // from the headers (0 = unknown)
  int64_t max_token_id() const;                       // the largest id in the data
  bool has_positions() const { return !positions_.empty(); }
  // This rank's next micro-batch; advances the global position by world * B sequences.
  Batch next();
  int64_t position() const { return position_; }
  void seek(int64_t position) { position_ = position; }

 private:
  struct Sequence {
    int32_t shard;
    int64_t offset;  // first element
  };
  const Sequence& sequence_at(int64_t global) ;

  DataOptions options_;
  std::vector<io::TokenShard> shards_, positions_;
  std::vector<Sequence> index_;
  std::vector<int64_t> order_;  // permutation of index_ for order_epoch_
  int64_t order_epoch_ = -1;
  int64_t position_ = 0;
  int64_t vocab_size_ = 0;
  bool packed_ = false;
};

}  // namespace prime::train
