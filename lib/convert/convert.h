// prime-convert's writer: carries out a ConversionPlan tensor by tensor, from the mmap'd (or
// pread) source into sharded safetensors in a staging directory that is renamed into place only
// when complete. Copied tensors go file to file inside the kernel (copy_file_range, as cp does)
// or, when cast to another dtype, through a 16 MB buffer; computed ones read their sources with
// pread (nothing stays mapped) and exist one at a time, so memory stays flat whatever the size.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/conversion_plan.h"

namespace prime::convert {

// Progress display: Tty rewrites one line in place (tensors, bytes, rate, ETA); Lines prints a
// plain line at most every few seconds and at the end; Quiet prints nothing.
enum class ProgressStyle { Tty, Lines, Quiet };

struct WriteResult {
  std::filesystem::path dir;
  std::vector<std::string> files;  // written, in the output directory
  size_t tensors = 0;
  uint64_t bytes = 0;              // tensor bytes
  double seconds = 0;
};

// Writes the plan to options.out: shards (+ index), config.json, prime.json, README.md and the
// source's tokenizer files and generation_config.json. Refuses an existing options.out unless
// options.force. On any error (ENOSPC included) the staging directory is removed and the
// UserError says so; options.out is then untouched.
WriteResult write_hybrid(const ConversionPlan& plan, const ConvertOptions& options, std::ostream& log,
                         ProgressStyle style = ProgressStyle::Lines);

// The whole command: plan, print the plan (in full with dry_run, which then stops before
// anything is created; as plan_json with json, dry runs only), write, print where it went. Uses
// one intra-op thread (see convert.cpp).
void run_convert(const ConvertOptions& options, bool dry_run, bool every_tensor, ProgressStyle style,
                 std::ostream& out, bool json = false);

// The plan for scripts (prime-convert --dry-run --json): prime.json's provenance, the output
// config.json and peak-memory estimate, and with every_tensor each output tensor (name, dtype,
// shape, how it is made, the source tensors it reads).
nlohmann::json plan_json(const ConversionPlan& plan, const std::string& command_line, bool every_tensor);

// Reports a running byte count: rate and ETA from the elapsed wall time.
class ProgressMeter {
 public:
  ProgressMeter(std::ostream& out, ProgressStyle style, std::string what);
  void update(size_t items_done, size_t items_total, uint64_t bytes_done, uint64_t bytes_total);
  void finish();

 private:
  std::string line(size_t items_done, size_t items_total, uint64_t bytes_done, uint64_t bytes_total) const;
  std::ostream& out_;
  ProgressStyle style_;
  std::string what_;
  std::chrono::steady_clock::time_point start_, last_;
  std::string last_line_;
  bool printed_ = false;
};

}  // namespace prime::convert
