// Helpers for the data/eval tests: a scratch directory, small files, and running a built CLI.
#pragma once

#include "test_helpers.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "data/token_shard.h"

namespace prime::test {

// A fresh directory under the system temp dir, removed (files only, one level) at the end.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag) {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("prime_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    for (const auto& entry : std::filesystem::directory_iterator(path_, ignored))
      std::filesystem::remove(entry.path(), ignored);
    std::filesystem::remove(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  // Names of the files in the directory (temporary files included), sorted.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline std::vector<uint32_t> shard_ids(const io::TokenShard& shard) {
  std::vector<uint32_t> ids(static_cast<size_t>(shard.size()));
  shard.read(0, shard.size(), ids.data());
  return ids;
}

// A tiny synthetic Qwen3 (2 layers, d=64) whose vocabulary is `vocab`.
inline std::string tiny_model(int64_t vocab = 300) {
  return "synthetic:qwen3-0.6b@layers=2,hidden=64,heads=4,kv_heads=2,head_dim=16,intermediate=96,vocab=" +
         std::to_string(vocab);
}

}  // namespace prime::test
