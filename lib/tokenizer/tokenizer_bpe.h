// The BPE model over raw bytes: a word's bytes start as one-byte tokens and are merged pair by
// pair, lowest merge rank first (leftmost on ties), exactly as HF's BPE::merge_word does.
// Working on raw bytes (not GPT-2's printable alphabet) is equivalent because that alphabet is
// a bijection on bytes, and it saves mapping every word.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer_cache.h"

namespace prime::io::detail {

// Open-addressing map from byte strings to ids. Keys are copied into one arena, so lookups by
// string_view allocate nothing (std::unordered_map<std::string> would build a key per lookup).
class BytesIdMap {
 public:
  void reserve(size_t count);
  // Returns false (and keeps the old id) when `key` is already present.
  bool insert(std::string_view key, int32_t id);
  std::optional<int32_t> find(std::string_view key) const;
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t offset = 0, length = 0;
    int32_t id = -1;  // -1: empty
  };
  void grow();
  std::vector<Slot> slots_;
  std::string arena_;
  size_t size_ = 0;
};

uint64_t hash_bytes(std::string_view bytes);

struct BpeMerge {
  int32_t left = 0, right = 0, merged = 0;
};

struct BpeOptions {
  std::optional<int32_t> unk_id;  // bytes with no token: dropped when unset (as in HF)
  bool fuse_unk = false;
  bool ignore_merges = false;     // a word that is itself a token is emitted as is
};

class BpeModel {
 public:
  // byte_ids[b]: id of the one-byte token b, -1 when absent. merges: priority order (index is
  // the rank; a later duplicate pair overrides an earlier one, as in HF). whole_words: every
  // token by its raw bytes; consulted only when ignore_merges is set.
  BpeModel(const std::array<int32_t, 256>& byte_ids, const std::vector<BpeMerge>& merges,
           BytesIdMap whole_words, BpeOptions options);
  ~BpeModel();

  // Appends the ids of one pre-tokenized word (raw bytes), using and filling the word cache.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  // Same without the cache.
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

 private:
  struct PairEntry {
    uint64_t key = ~0ULL;  // (left << 32) | right; ~0: empty
    int32_t rank = 0, merged = 0;
  };
  const PairEntry* find_pair(int32_t left, int32_t right) const;

  std::array<int32_t, 256> byte_ids_;
  std::vector<PairEntry> pairs_;
  uint64_t pair_mask_ = 0;
  BytesIdMap whole_words_;
  BpeOptions options_;
  WordCacheOwner cache_;
};

}  // namespace prime::io::detail
