// Timing of one SSM decode step (kernels/ssm_decode) against the torch in-place step it replaces
// (model::gated_delta_rule_step_in_place, model::ssd_step_in_place under policy Torch), the same
// state and operands in one run, for prime-bench's kernel tables. Decode is memory bound: the
// figure of merit is the traffic floor (state read once and written once, plus the token's
// vectors) over the time, against the HBM bandwidth.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace prime::eval {

struct DecodeStepBenchOptions {
  std::vector<int64_t> batches = {1, 16, 64, 256};
  // The Qwen3-8B shape's hybrid layers (prime-convert: head_dim 128, 32 query heads): GDN
  // H = 32, Dk = Dv = 128; Mamba-2 H = 32 heads of P = 128 with state dim N = 128.
  int64_t gdn_heads = 32, gdn_key_dim = 128, gdn_value_dim = 128;
  int64_t mamba2_heads = 32, mamba2_head_dim = 128, mamba2_state_dim = 128;
  int warmup = 2, repeats = 5;
  int steps_per_repeat = 20;  // steps queued per timed run, so the synchronisation is amortised
  double hbm_tbps = 4.8;      // H200
};

struct DecodeStepBenchRow {
  std::string type;   // GDN or M2
  std::string shape;  // "B=.. H=.. 128x128"
  double floor_bytes = 0;  // 2 x state bytes + the vectors read and written
  double kernel_ms = 0, torch_ms = 0;  // per step, median of the repeats
  double kernel_tbps = 0, torch_tbps = 0;  // floor bytes / time
  double kernel_fraction_of_hbm = 0;       // kernel_tbps / hbm_tbps
};

// Needs a CUDA device and a build with the kernels (else a UserError).
std::vector<DecodeStepBenchRow> run_decode_step_bench(const DecodeStepBenchOptions& options,
                                                      const at::Device& device);

}  // namespace prime::eval
