#include "tokenizer/tokenizer_bpe.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "util/error.h"

namespace prime::io::detail {

uint64_t hash_bytes(std::string_view bytes) {
  // Eight bytes per step with a multiply-xorshift mix: words are short and hashed once per
  // lookup, so this only needs to be quick and spread well.
  uint64_t hash = 0x9E3779B97F4A7C15ULL ^ (bytes.size() * 0xC2B2AE3D27D4EB4FULL);
  size_t pos = 0;
  for (; pos + 8 <= bytes.size(); pos += 8) {
    uint64_t chunk;
    std::memcpy(&chunk, bytes.data() + pos, 8);
    hash = (hash ^ chunk) * 0xFF51AFD7ED558CCDULL;
    hash ^= hash >> 29;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes.data() + pos, bytes.size() - pos);
  hash = (hash ^ tail) * 0xC4CEB9FE1A85EC53ULL;
  hash ^= hash >> 32;
  return hash;
}

void BytesIdMap::reserve(size_t count) {
  size_t capacity = 16;
  while (capacity < count * 2) capacity *= 2;
  if (capacity <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(capacity, Slot{});
  const size_t mask = capacity - 1;
  for (const Slot& slot : old) {
    if (slot.id < 0) continue;
    size_t index = slot.hash & mask;
    while (slots_[index].id >= 0) index = (index + 1) & mask;
    slots_[index] = slot;
  }
}

void BytesIdMap::grow() { reserve(std::max<size_t>(16, size_ * 2)); }

bool BytesIdMap::insert(std::string_view key, int32_t id) {
  PRIME_CHECK(id >= 0, "ids are non-negative");
  if ((size_ + 1) * 2 > slots_.size()) grow();
  const uint64_t hash = hash_bytes(key);
  const size_t mask = slots_.size() - 1;
  size_t index = hash & mask;
  while (slots_[index].id >= 0) {
    const Slot& slot = slots_[index];
    if (slot.hash == hash && std::string_view(arena_).substr(slot.offset, slot.length) == key)
      return false;
    index = (index + 1) & mask;
  }
  PRIME_CHECK(arena_.size() + key.size() < (1ULL << 32), "token arena over 4 GiB");
  slots_[index] = Slot{hash, static_cast<uint32_t>(arena_.size()),
                       static_cast<uint32_t>(key.size()), id};
  arena_.append(key);
  ++size_;
  return true;
}

std::optional<int32_t> BytesIdMap::find(std::string_view key) const {
  if (slots_.empty()) return std::nullopt;
  const uint64_t hash = hash_bytes(key);
  const size_t mask = slots_.size() - 1;
  for (size_t index = hash & mask; slots_[index].id >= 0; index = (index + 1) & mask) {
    const Slot& slot = slots_[index];
    if (slot.hash == hash && slot.length == key.size() &&
        std::memcmp(arena_.data() + slot.offset, key.data(), key.size()) == 0)
      return slot.id;
  }
  return std::nullopt;
}

BpeModel::BpeModel(const std::array<int32_t, 256>& byte_ids, const std::vector<BpeMerge>& merges,
                   BytesIdMap whole_words, BpeOptions options)
    : byte_ids_(byte_ids),
      whole_words_(std::move(whole_words)),
      options_(options) {
  size_t capacity = 16;
  while (capacity < merges.size() * 2) capacity *= 2;
  pairs_.assign(capacity, PairEntry{});
  pair_mask_ = capacity - 1;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const BpeMerge& merge = merges[rank];
    PRIME_CHECK(merge.left >= 0 && merge.right >= 0 && merge.merged >= 0);
    const uint64_t key = (static_cast<uint64_t>(merge.left) << 32) | static_cast<uint32_t>(merge.right);
    size_t index = (key * 0x9E3779B97F4A7C15ULL >> 20) & pair_mask_;
    while (pairs_[index].key != ~0ULL && pairs_[index].key != key) index = (index + 1) & pair_mask_;
    pairs_[index] = PairEntry{key, static_cast<int32_t>(rank), merge.merged};
  }
}

BpeModel::~BpeModel() = default;

const BpeModel::PairEntry* BpeModel::find_pair(int32_t left, int32_t right) const {
  const uint64_t key = (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
  for (size_t index = (key * 0x9E3779B97F4A7C15ULL >> 20) & pair_mask_; pairs_[index].key != ~0ULL;
       index = (index + 1) & pair_mask_)
    if (pairs_[index].key == key) return &pairs_[index];
  return nullptr;
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (auto id = whole_words_.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  if (word.size() == 1 && byte_ids_[static_cast<unsigned char>(word[0])] >= 0) {
    out.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
    return;
  }
  const uint64_t hash = hash_bytes(word);
  LocalWordCache& cache = cache_.local();
  if (cache.find(word, hash, out)) return;
  const size_t first = out.size();
  merge_word(word, out);
  cache.insert(word, hash, out.data() + first, out.size() - first);
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbours in the current segmentation, -1 at the ends
  };
  struct Candidate {
    int32_t rank, pos, merged;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : pos > other.pos;
    }
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  // Bytes without a token become the unknown token (fused into one when asked) or vanish,
  // which is what HF does for a vocabulary that lacks some bytes.
  bool pending_unk = false;
  auto add = [&](int32_t id) {
    const int32_t pos = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, pos - 1, -1});
    if (pos > 0) symbols[pos - 1].next = pos;
  };
  for (unsigned char byte : word) {
    const int32_t id = byte_ids_[byte];
    if (id >= 0) {
      if (pending_unk) add(*options_.unk_id);
      pending_unk = false;
      add(id);
    } else if (options_.unk_id) {
      if (pending_unk && !options_.fuse_unk) add(*options_.unk_id);
      pending_unk = true;
    }
  }
  if (pending_unk) add(*options_.unk_id);

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    if (const PairEntry* pair = find_pair(symbols[pos].id, symbols[next].id))
      queue.push(Candidate{pair->rank, pos, pair->merged});
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) consider(pos);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    // A stale entry: the pair at this position changed since it was queued.
    const PairEntry* pair = find_pair(left.id, symbols[left.next].id);
    if (!pair || pair->merged != top.merged) continue;
    Symbol& right = symbols[left.next];
    left.id = top.merged;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    right.id = -1;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int32_t pos = symbols.empty() ? -1 : 0; pos >= 0; pos = symbols[pos].next)
    out.push_back(symbols[pos].id);
}

}  // namespace prime::io::detail
