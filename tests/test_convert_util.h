// Shared by the prime-convert tests: temporary directories, one-call conversions, tensor access.
#pragma once

#include <ATen/ATen.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "convert/convert.h"
#include "io/atomic_dir.h"
#include "io/checkpoint.h"
#include "test_helpers.h"

namespace prime::test {

// A fresh directory under /tmp, removed (with everything in it) when the test ends.
class ConvertTempDir {
 public:
  explicit ConvertTempDir(const std::string& name)
      : path_(std::filesystem::temp_directory_path() /
              ("prime_convert_" + name + "_" + std::to_string(::getpid()))) {
    io::remove_tree(path_);
    std::filesystem::create_directories(path_);
  }
  ~ConvertTempDir() { io::remove_tree(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline std::filesystem::path parity_fixture(const std::string& name) { return fixtures_dir() / "parity" / name; }

// A small Qwen3-shaped synthetic source (GQA 4:2, head_dim 32 != hidden/heads).
inline std::string tiny_synthetic(int layers) {
  return "synthetic:qwen3-0.6b@layers=" + std::to_string(layers) +
         ",hidden=64,heads=4,kv_heads=2,head_dim=32,intermediate=96,vocab=128";
}

inline convert::ConvertOptions pattern_options(const std::string& source, const std::string& pattern,
                                               const std::filesystem::path& out) {
  convert::ConvertOptions options;
  options.source = source;
  options.layers.pattern = pattern;
  options.out = out;
  options.command_line = "prime-convert (test)";
  return options;
}

// Plans and writes quietly; returns the plan.
inline convert::ConversionPlan convert_quietly(const convert::ConvertOptions& options) {
  convert::ConversionPlan plan = convert::plan_conversion(options);
  std::ostringstream log;
  convert::write_hybrid(plan, options, log, convert::ProgressStyle::Quiet);
  return plan;
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

}  // namespace prime::test
