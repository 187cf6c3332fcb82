// Timing of the SSM cores' chunked torch-ops forms (forward, forward+backward) at a given
// (B, T, H, D): the baseline prime's CUDA kernels must beat. Inputs are random, shaped as the
// mixers feed their cores (normalised q/k, gates in range); the backward takes q/k/v's gradients.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace prime::eval {

struct SsmBenchOptions {
  int64_t batch = 4, tokens = 8192, heads = 32, head_dim = 128;
  // The cores' compute dtype: the mixers use fp32, except GKA's state recurrence and solve, which
  // run in float64 by default (time that with kDouble; fp32 is the faster solve option).
  at::ScalarType dtype = at::kFloat;
  std::vector<std::string> types = {"GDN", "GKA", "M2"};
  int gka_iterations = 30;
  int warmup = 1, repeats = 3;
  bool backward = true;
};

struct SsmBenchRow {
  std::string type;
  std::string shape;
  double forward_ms = 0;
  double forward_backward_ms = 0;  // 0 when not measured
};

std::vector<SsmBenchRow> run_ssm_bench(const SsmBenchOptions& options, const at::Device& device);

// prime's CUDA kernels (kernels/<op>/) against the torch-ops forms, the same core on the same
// inputs in one run: one row per (type, path). Types without kernels yet are skipped.
struct KernelBenchRow {
  std::string type, shape;
  double kernel_forward_ms = 0, kernel_forward_backward_ms = 0;
  double torch_forward_ms = 0, torch_forward_backward_ms = 0;
  double kernel_forward_tflops = 0;  // 4 K V flops per token and head (the GLA-shaped part)
};
std::vector<KernelBenchRow> run_kernel_bench(const SsmBenchOptions& options, const at::Device& device);

// GKA's bf16 solve alone on one warpgroup a chunk (kernels/gka_solve/gka_solve_one.h) at the options' shape: its
// B H ceil(T / 64) chunks of random systems, the options' iterations; the median time, or 0 where it does not run
// (head dim other than 128, no iterations, not a Hopper GPU).
struct SolveTiming {
  int64_t chunks = 0;
  int blocks_per_multiprocessor = 0;
  double ms = 0;
};
SolveTiming time_gka_solve_one_group(const SsmBenchOptions& options, const at::Device& device);

// For a profiler rather than a clock: each type's core on the kernels, forward+backward (forward
// only without options.backward or for GDN in bf16), once as warm-up and once inside a profiler range
// (run_in_profiler_range). Returns the shapes run, one per type with kernels.
std::vector<std::string> profile_kernel_cores(const SsmBenchOptions& options, const at::Device& device);

}  // namespace prime::eval
