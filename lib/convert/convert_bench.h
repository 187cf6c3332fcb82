// prime-bench convert: conversion wall time next to a plain copy (`cp`) of the same source files,
// measured in the same run, and the conversion's peak resident memory. The synthetic source is
// written to disk once (bf16) and cached under the work directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

namespace prime::convert {

struct ConvertBenchOptions {
  std::string source = "synthetic:qwen3-8b";  // must be synthetic:ALIAS[@...]
  std::string layer = "GKA";
  std::string ratio = "1:3";
  std::string init = "hmf";
  std::filesystem::path work_dir = "/tmp/prime-bench";
  bool keep_outputs = false;  // keep the copy and the converted checkpoint
  bool evict = true;          // drop the source from the page cache before each timed run
  int rounds = 3;             // cp, convert, cp, convert, ...: medians, and the spread shows the noise
};

struct ConvertBenchResult {
  std::string source;
  std::filesystem::path source_dir;
  bool cached = false;              // the materialised source was already there
  double materialise_seconds = 0;
  size_t source_files = 0;
  uint64_t source_bytes = 0;        // bytes of the source's files
  std::vector<double> copy_seconds;     // per round: cp -r --reflink=never, then fsync of every file
  std::vector<double> convert_seconds;  // per round: plan + write + fsync + rename
  uint64_t output_bytes = 0;        // bytes of the converted directory's files
  uint64_t rss_before_bytes = 0;    // VmRSS when the conversion started
  uint64_t peak_rss_bytes = 0;      // VmHWM over the conversions
  std::string peak_rss_how;
  bool evicted = false;
  unsigned cpus = 0;
};

// UserError for a non-synthetic source or an unusable work directory.
ConvertBenchResult run_convert_bench(const ConvertBenchOptions& options, std::ostream& log);

// The table prime-bench prints: per-round times, medians and the ratio of the medians.
std::string format_convert_bench(const ConvertBenchResult& result, const ConvertBenchOptions& options);

// Resident memory of this process from /proc/self/status ("VmRSS", "VmHWM"); 0 when unreadable.
uint64_t process_memory_bytes(const std::string& field);
// Resets VmHWM to the current RSS (/proc/self/clear_refs "5"); false where unsupported.
bool reset_peak_rss();

}  // namespace prime::convert
