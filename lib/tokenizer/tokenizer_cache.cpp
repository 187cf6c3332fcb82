#include "tokenizer/tokenizer_cache.h"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace prime::io::detail {

void LocalWordCache::clear(size_t capacity) {
  slots_.assign(capacity, Slot{});
  bytes_.clear();
  ids_.clear();
  entries_ = 0;
}

bool LocalWordCache::find(std::string_view word, uint64_t hash, std::vector<int32_t>& out) const {
  if (slots_.empty()) return false;
  const size_t mask = slots_.size() - 1;
  for (size_t index = hash & mask; slots_[index].used; index = (index + 1) & mask) {
    const Slot& slot = slots_[index];
    if (slot.hash == hash && slot.bytes_length == word.size() &&
        std::memcmp(bytes_.data() + slot.bytes_offset, word.data(), word.size()) == 0) {
      out.insert(out.end(), ids_.begin() + slot.ids_offset,
                 ids_.begin() + slot.ids_offset + slot.ids_length);
      return true;
    }
  }
  return false;
}

void LocalWordCache::insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t count) {
  if (word.size() > kMaxWordBytes || count > word.size()) return;
  if (entries_ >= kMaxEntries) {
    clear(slots_.size());
  } else if ((entries_ + 1) * 2 > slots_.size()) {
    // Grow by rebuilding: start small so a short-lived thread costs little memory.
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(std::max<size_t>(1024, old.size() * 2), Slot{});
    const size_t mask = slots_.size() - 1;
    for (const Slot& slot : old) {
      if (!slot.used) continue;
      size_t index = slot.hash & mask;
      while (slots_[index].used) index = (index + 1) & mask;
      slots_[index] = slot;
    }
  }
  const size_t mask = slots_.size() - 1;
  size_t index = hash & mask;
  while (slots_[index].used) index = (index + 1) & mask;
  Slot& slot = slots_[index];
  slot = Slot{hash, static_cast<uint32_t>(bytes_.size()), static_cast<uint32_t>(ids_.size()),
              static_cast<uint16_t>(word.size()), static_cast<uint16_t>(count), true};
  bytes_.append(word);
  ids_.insert(ids_.end(), ids, ids + count);
  ++entries_;
}

namespace {

struct ThreadCacheEntry {
  uint64_t model_id;
  std::weak_ptr<int> alive;
  std::unique_ptr<LocalWordCache> cache;
};

std::atomic<uint64_t> next_model_id{1};

}  // namespace

WordCacheOwner::WordCacheOwner() : id_(next_model_id++), alive_(std::make_shared<int>(0)) {}

LocalWordCache& WordCacheOwner::local() const {
  thread_local std::vector<ThreadCacheEntry> caches;
  thread_local size_t last = 0;
  if (last < caches.size() && caches[last].model_id == id_) return *caches[last].cache;
  for (size_t index = 0; index < caches.size(); ++index) {
    if (caches[index].model_id == id_) {
      last = index;
      return *caches[index].cache;
    }
  }
  caches.erase(std::remove_if(caches.begin(), caches.end(),
                              [](const ThreadCacheEntry& entry) { return entry.alive.expired(); }),
               caches.end());
  caches.push_back(ThreadCacheEntry{id_, alive_, std::make_unique<LocalWordCache>()});
  last = caches.size() - 1;
  return *caches.back().cache;
}

}  // namespace prime::io::detail
