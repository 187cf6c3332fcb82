// Timing of the SSM mixers' gated output norms (kernels/gated_norm) against their torch forms
// (model::gated_rms_norm and model::rms_norm_of_gated under policy Torch), the same inputs in one
// run, for prime-bench's kernel tables. Memory bound: bytes read and written over the time.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace prime::eval {

struct GatedNormBenchOptions {
  // [tokens, heads, D]: one 4096-token sequence of the 8B shape (a training step's rows).
  int64_t tokens = 4096, heads = 32, head_dim = 128;
  int warmup = 2, repeats = 5;
  int calls_per_repeat = 10;
};

// Four rows: each order (GDN/GKA "norm, gate"; Mamba-2 "gate, norm") as a forward and as a
// training call with its backward, x fp32, the gate bf16 (GDN/GKA, from the bf16 projection) or
// fp32 (Mamba-2, a slice of its fp32 in-projection), the output bf16 (the out-projection's input
// under autocast), the weight trained. Bytes: forward x + gate + output; fwd+bwd adds the
// backward's x, gate and output gradient read, x's and the gate's gradients written, and the
// weight's per-element terms written and summed.
struct GatedNormBenchRow {
  std::string shape, op;
  double bytes = 0;
  double kernel_ms = 0, torch_ms = 0;
  double kernel_tbps = 0, torch_tbps = 0;
};

// Needs a CUDA device and a build with the kernels (else a UserError).
std::vector<GatedNormBenchRow> run_gated_norm_bench(const GatedNormBenchOptions& options, const at::Device& device);

}  // namespace prime::eval
