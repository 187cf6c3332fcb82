// `prime-bench train`: the time of one training step of a hybrid and where it goes. Builds the
// run's models as prime-train does (teacher and student sharing tensors), feeds random token ids
// (the content does not change the work), and times whole steps (loss, backward, AdamW update)
// and, apart, each replaced layer's mixer forward + backward on an input of the step's shape: their
// sum over the step time is the share of the step spent in the SSM layers.
#pragma once

#include <ATen/ATen.h>

#include <ostream>
#include <string>
#include <vector>

#include "train/train_options.h"

namespace prime::train {

struct TrainBenchOptions {
  // model, teacher, stage, align_layers, train, seq_len, recompute, peak_tflops; device may be
  // "auto" (CUDA when there is one) and dtype "auto" (bf16 autocast on CUDA, fp32 on the CPU).
  TrainOptions train;
  int64_t batch = 1;   // sequences per step
  int warmup = 1, repeats = 3;
  // Time the step and the mixers twice on the same models, with prime's kernels and with the
  // torch-ops forms (kernels::ScopedKernelPolicy), and print the ratio; otherwise once, under
  // PRIME_KERNELS.
  bool compare_kernels = false;
  // Time nothing: one warm-up step, then one step between cudaProfilerStart and cudaProfilerStop
  // (ncu --profile-from-start off sees that step's kernels and nothing else), under PRIME_KERNELS.
  bool profile = false;
};

// One timing of the step and of the replaced layers' mixers under one kernel policy.
struct TrainBenchTiming {
  std::string label;  // "kernels" / "torch-ops" under compare_kernels, else empty
  double step_ms = 0, tokens_per_second = 0, mfu = 0;  // mfu 0 where the peak is unknown (CPU)
  double peak_bytes = 0;                               // NaN on the CPU
  double ssm_ms = 0, ssm_share = 0;                    // replaced layers' mixers, forward + backward
};

struct TrainBenchResult {
  std::string device, dtype;  // as run ("auto" resolved)
  int64_t tokens_per_step = 0, student_parameters = 0, trained_parameters = 0;
  std::vector<int64_t> replaced_layers;
  double setup_seconds = 0;  // building teacher and student (sources read or drawn, converted, on the device)
  std::vector<TrainBenchTiming> timings;  // one, or kernels then torch-ops; none under profile
};

// UserError for bad specs or options (as prime-train); a device out of memory is a UserError
// naming the shape and suggesting --recompute. With a log, each part's lines are written as soon
// as it is measured (the models and their setup time, the step, the mixers): building an 8B
// teacher and student alone takes a while.
TrainBenchResult run_train_bench(const TrainBenchOptions& options, std::ostream* log = nullptr);

// Each part's lines of the result, as prime-bench prints them (a timing's lines carry its label).
std::string format_train_bench_setup(const TrainBenchResult& result, const TrainBenchOptions& options);
std::string format_train_bench_step(const TrainBenchTiming& timing, const TrainBenchOptions& options);
std::string format_train_bench_mixers(const TrainBenchTiming& timing);
// The torch-ops timing over the kernels' (compare_kernels).
std::string format_train_bench_ratio(const TrainBenchResult& result);

}  // namespace prime::train
