// Helpers for the training tests: a scratch run directory, small token shards, tiny models.
#pragma once

#include "test_helpers.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "data/token_shard.h"
#include "io/atomic_dir.h"

namespace prime::test {

// A tiny Qwen3-shaped teacher (vocabulary 64) and hybrids of it.
inline const std::string kTinyTeacher =
    "synthetic:qwen3-0.6b@layers=2,hidden=32,heads=2,kv_heads=1,head_dim=16,intermediate=64,vocab=64,seed=3";

class TrainDir {
 public:
  explicit TrainDir(const std::string& tag) {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("prime_train_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~TrainDir() { io::remove_tree(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A stream shard of `count` ids < vocab that a model can learn: a noisy periodic pattern.
// period 0: uniformly random ids.
inline std::string write_pattern_shard(const std::string& path, int64_t count, uint32_t vocab = 64,
                                       uint32_t period = 7) {
  io::TokenShardHeader header;
  header.width = 2;
  header.vocab_size = vocab;
  io::TokenShardWriter writer(path, header);
  std::vector<uint32_t> ids;
  uint64_t state = 12345;
  for (int64_t i = 0; i < count; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const bool noise = period == 0 || (state >> 60) == 0;  // 1 in 16
    ids.push_back(noise ? static_cast<uint32_t>((state >> 33) % vocab) : static_cast<uint32_t>((i % period) * 5 % vocab));
  }
  writer.append(ids);
  writer.finish();
  return path;
}

// The "loss" of every step line of a run's metrics.jsonl, in order.
inline std::vector<double> step_losses(const std::string& metrics_path) {
  std::vector<double> losses;
  std::ifstream in(metrics_path);
  std::string line;
  while (std::getline(in, line)) {
    const auto json = nlohmann::json::parse(line);
    if (json["kind"] == "step") losses.push_back(json["loss"].get<double>());
  }
  return losses;
}

}  // namespace prime::test
