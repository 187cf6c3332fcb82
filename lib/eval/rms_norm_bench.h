// Timing of the fused RMSNorm (kernels/rms_norm) against its torch-ops form (model::rms_norm and
// model::add_rms_norm under policy Torch), the same inputs in one run, for prime-bench's kernel
// tables. Memory bound: the figure of merit is bytes read and written over the time.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace prime::eval {

struct RmsNormBenchOptions {
  // (rows, D): one decode token of the 8B shape, a decode batch, a prefill chunk.
  std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 4096}, {64, 4096}, {8192, 4096}};
  at::ScalarType dtype = at::kBFloat16;
  int warmup = 2, repeats = 5;
  int calls_per_repeat = 20;  // calls queued per timed run, so the synchronisation is amortised
};

// Three rows per shape. Bytes: "norm" reads x and the weight and writes the output; "add+norm"
// reads x, the residual and the weight and writes the sum and the output; "fwd+bwd" is a training
// call (x requires grad, the weight frozen) and its backward from a given output gradient: x read
// twice, the output, the output's gradient and x's gradient once each, the weight twice.
struct RmsNormBenchRow {
  std::string shape;  // "rows x D dtype"
  std::string op;     // "norm", "add+norm" or "fwd+bwd"
  double bytes = 0;
  double kernel_ms = 0, torch_ms = 0;      // per call, median of the repeats
  double kernel_tbps = 0, torch_tbps = 0;  // bytes / time
};

// Needs a CUDA device and a build with the kernels (else a UserError).
std::vector<RmsNormBenchRow> run_rms_norm_bench(const RmsNormBenchOptions& options,
                                                const at::Device& device);

}  // namespace prime::eval
