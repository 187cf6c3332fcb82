// BPE results of words seen before. Each thread keeps its own cache per model (as HF does), so
// parallel encoders share nothing and take no locks; a shared locked cache stopped scaling
// beyond a few threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace prime::io::detail {

// One thread's cache for one model: an open-addressing table over two arenas (word bytes,
// ids), so a hit allocates nothing. When full it is emptied: text has a small working set.
class LocalWordCache {
 public:
  static constexpr size_t kMaxEntries = 1 << 16;
  static constexpr size_t kMaxWordBytes = 256;  // longer words are rare; HF skips them too

  bool find(std::string_view word, uint64_t hash, std::vector<int32_t>& out) const;
  void insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t count);

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t bytes_offset = 0, ids_offset = 0;
    uint16_t bytes_length = 0, ids_length = 0;
    bool used = false;
  };
  void clear(size_t capacity);
  std::vector<Slot> slots_;
  std::string bytes_;
  std::vector<int32_t> ids_;
  size_t entries_ = 0;
};

// Owned by a model; hands each thread that model's LocalWordCache. Caches of destroyed models
// are dropped the next time that thread sets up a cache for another model.
class WordCacheOwner {
 public:
  WordCacheOwner();
  LocalWordCache& local() const;

 private:
  uint64_t id_;
  std::shared_ptr<int> alive_;
};

}  // namespace prime::io::detail
