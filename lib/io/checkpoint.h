// A Hugging Face checkpoint's tensors: one .safetensors file, a directory holding
// model.safetensors, or a directory with model.safetensors.index.json and its shards.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/safetensors.h"

namespace prime::io {

inline constexpr const char* kSingleFileName = "model.safetensors";
inline constexpr const char* kIndexFileName = "model.safetensors.index.json";

class Checkpoint {
 public:
  // Opens and validates every file up front (headers only; data stays mapped, not read).
  // An index must name plain files inside the directory (symlinks, as in the HF cache, are
  // followed), every shard must exist and hold the tensors the index places in it.
  static Checkpoint open(const std::filesystem::path& path);

  // In storage order: shard by shard (in file-name order), by offset within a shard, which is
  // the order that reads the files sequentially.
  std::vector<std::string> names() const { return names_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // UserError "missing tensor NAME in DIR"
  at::Tensor tensor(const std::string& name) const;       // zero-copy view, see SafetensorsFile
  void release(const std::string& name) const;            // see SafetensorsFile::release
  uint64_t total_bytes() const { return total_bytes_; }
  const std::filesystem::path& path() const { return path_; }
  std::map<std::string, std::string> metadata() const;  // __metadata__ of the first shard
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  struct Entry {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };
  const Entry& entry(const std::string& name) const;

  std::filesystem::path path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;  // sorted by file name
  std::unordered_map<std::string, Entry> entries_;
  std::vector<std::string> names_;
  uint64_t total_bytes_ = 0;
};

}  // namespace prime::io
