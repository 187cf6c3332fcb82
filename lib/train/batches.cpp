#include "train/batches.h"

#include <filesystem>

#include "data/pack.h"
#include "train/losses.h"
#include "util/error.h"

namespace prime::train {
namespace {

// splitmix64: a fixed, platform-independent generator, so the data order depends on the seed
// alone (not on the library's generator implementation).
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

TrainData::TrainData(DataOptions options) : options_(std::move(options)) {
  if (options_.shards.empty()) throw user_error("--data: no shard given");
  if (options_.seq_len < 2) throw user_error("--seq-len must be at least 2, got ", options_.seq_len);
  PRIME_CHECK(options_.world >= 1 && options_.rank >= 0 && options_.rank < options_.world);
  PRIME_CHECK(options_.sequences_per_micro_batch >= 1);
  for (size_t s = 0; s < options_.shards.size(); ++s) {
    const std::string& path = options_.shards[s];
    io::TokenShard shard = io::TokenShard::open(path);
    const auto& header = shard.header();
    if (header.kind == io::ShardKind::kPositions)
      throw user_error(path, ": a positions shard, not token ids (give the token shard; its positions are found beside it)");
    const bool packed = header.row_length != 0;
    if (s == 0) packed_ = packed;
    if (packed != packed_) throw user_error(path, ": packed and unpacked shards cannot be mixed in one run");
    if (packed && header.row_length != static_cast<uint32_t>(options_.seq_len))
      throw user_error(path, ": packed rows of ", header.row_length, " tokens, but --seq-len is ", options_.seq_len);
    if (header.vocab_size) vocab_size_ = std::max<int64_t>(vocab_size_, header.vocab_size);
    if (packed) {
      for (int64_t row = 0; row < shard.rows(); ++row) index_.push_back({static_cast<int32_t>(s), row * options_.seq_len});
      const std::string positions_path = data::positions_path_for(path);
      if (std::filesystem::exists(positions_path)) {
        io::TokenShard positions = io::TokenShard::open(positions_path);
        if (positions.header().kind != io::ShardKind::kPositions || positions.size() != shard.size())
          throw user_error(positions_path, ": not the positions shard of ", path, " (kind or length differ)");
        positions_.push_back(positions);
      } else if (!positions_.empty()) {
        throw user_error(path, ": has no positions shard (", positions_path, ") while earlier shards have one");
      }
    } else {
      for (int64_t start = 0; start + options_.seq_len + 1 <= shard.size(); start += options_.seq_len)
        index_.push_back({static_cast<int32_t>(s), start});
    }
    shards_.push_back(shard);
  }
  if (!positions_.empty() && positions_.size() != shards_.size())
    throw user_error("some packed shards have a positions shard and some do not");
  const int64_t needed = options_.world * options_.sequences_per_micro_batch;
  if (sequences() < needed)
    throw user_error("the data holds ", sequences(), " sequences of ", options_.seq_len, " tokens, but one batch needs ",
                     needed, " (", options_.world, " rank(s) x ", options_.sequences_per_micro_batch, ")");
}

int64_t TrainData::max_token_id() const {
  int64_t high = 0;
  constexpr int64_t kPiece = int64_t{1} << 24;  // widened a piece at a time: shards can be large
  for (const auto& shard : shards_) {
    const at::Tensor ids = shard.tensor().reshape({-1});
    for (int64_t begin = 0; begin < ids.numel(); begin += kPiece)
      high = std::max(high, ids.narrow(0, begin, std::min(kPiece, ids.numel() - begin)).to(at::kLong).max().item<int64_t>());
  }
  return high;
}

const TrainData::Sequence& TrainData::sequence_at(int64_t global) {
  const int64_t count = sequences();
  const int64_t epoch = global / count;
  if (epoch != order_epoch_) {
    order_.resize(count);
    for (int64_t i = 0; i < count; ++i) order_[i] = i;
    uint64_t state = options_.seed * 0x100000001B3ull + static_cast<uint64_t>(epoch) + 1;
    for (int64_t i = count - 1; i > 0; --i) std::swap(order_[i], order_[splitmix64(state) % static_cast<uint64_t>(i + 1)]);
    order_epoch_ = epoch;
  }
  return index_[order_[global % count]];
}

Batch TrainData::next() {
  const int64_t rows = options_.sequences_per_micro_batch, length = options_.seq_len;
  Batch batch;
  batch.input_ids = at::empty({rows, length}, at::kLong);
  batch.targets = at::empty({rows, length}, at::kLong);
  if (has_positions()) batch.positions = at::empty({rows, length}, at::kLong);
  const int64_t first = position_ + options_.rank * rows;
  for (int64_t row = 0; row < rows; ++row) {
    const Sequence& sequence = sequence_at(first + row);
    const io::TokenShard& shard = shards_[sequence.shard];
    if (packed_) {
      const at::Tensor ids = shard.slice(sequence.offset, length);
      batch.input_ids[row].copy_(ids);
      batch.targets[row].narrow(0, 0, length - 1).copy_(ids.narrow(0, 1, length - 1));
      batch.targets[row][length - 1] = kIgnoreTarget;
      if (has_positions()) {
        const at::Tensor positions = positions_[sequence.shard].slice(sequence.offset, length);
        batch.positions[row].copy_(positions);
        // A document's last token does not predict the next document's first.
        batch.targets[row].narrow(0, 0, length - 1).masked_fill_(positions.narrow(0, 1, length - 1).eq(0), kIgnoreTarget);
      }
    } else {
      const at::Tensor ids = shard.slice(sequence.offset, length + 1);
      batch.input_ids[row].copy_(ids.narrow(0, 0, length));
      batch.targets[row].copy_(ids.narrow(0, 1, length));
    }
  }
  position_ += options_.world * rows;
  return batch;
}

}  // namespace prime::train
