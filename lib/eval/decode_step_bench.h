// Timing of one decode step of a layer's core with prime's kernels against the torch form it
// replaces, the same operands in one run, for prime-bench's kernel tables: the SSM steps
// (kernels/ssm_decode vs model::gated_delta_rule_step_in_place / model::ssd_step_in_place under
// policy Torch) and attention over a static cache's slots (kernels/attention_decode vs
// model::attend_one_token's torch form). Decode is memory bound: the figure of merit is the
// traffic floor (state read once and written once, or every key and value read once, plus the
// token's vectors) over the time, against the HBM bandwidth and, for the SSM steps, against a copy
// of the state's size timed in the same run. GKA's step (kernels/ssm_decode vs the mixer's torch step,
// gka_detail::recurrent_step on the states cast to the solve dtype) is timed three ways: its 30-iteration
// solve in float64 (inference's default), in fp32 (a layer solving in fp32), and without the solve
// (num_iter = 0: S alone), so the solve's share of the step is one subtraction.
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
  // GKA: H = 32 heads of D = 128, both states (H's k k^T and S's k v^T) D x D fp32 in the cache.
  int64_t gka_heads = 32, gka_head_dim = 128;
  int gka_num_iter = 30;
  double gka_ridge = 0.02;
  // Attention of the same shape (32 query heads over 8 KV heads of 128, bf16 cache) at
  // (B, slots) points: 4K and 32K contexts, one sequence and a batch; 4130 slots is what a
  // static cache for P = 4096 holds (P + 32 steps + 2 warm-up), a count the torch form's
  // matmuls find unaligned.
  int64_t attention_heads = 32, attention_kv_heads = 8, attention_head_dim = 128;
  std::vector<std::pair<int64_t, int64_t>> attention_points = {
      {1, 4096}, {16, 4096}, {64, 4096}, {64, 4130}, {1, 32768}, {16, 32768}, {1, 131072}};
  int warmup = 2, repeats = 5;
  int steps_per_repeat = 20;  // steps queued per timed run, so the synchronisation is amortised
  double hbm_tbps = 4.8;      // the "% HBM" column's bandwidth (prime-bench: the device's peak)
};

struct DecodeStepBenchRow {
  std::string type;   // GDN, M2, GKA or ATTN
  std::string shape;  // "B=.. H=.. 128x128" (GKA: then "N=30 f64", "N=30 f32" or "N=0"; ATTN: "B=.. S=.. 32/8x128")
  // 2 x state bytes (GKA: both states, S alone at N=0; ATTN: the keys and values) + the vectors
  double floor_bytes = 0;
  double kernel_ms = 0, torch_ms = 0;  // per step, median of the repeats
  double kernel_tbps = 0, torch_tbps = 0;  // floor bytes / time
  double kernel_fraction_of_hbm = 0;       // kernel_tbps / hbm_tbps
  // GDN, M2, GKA: a device-to-device copy of a tensor of the state's size (read once, written once, as
  // the step's state is), timed in the same run: what this GPU gives such a stream, the practical
  // ceiling of the step (0 for ATTN, which only reads).
  double copy_tbps = 0;
  double kernel_fraction_of_copy = 0;  // kernel_tbps / copy_tbps
};

// Needs a CUDA device and a build with the kernels (else a UserError).
std::vector<DecodeStepBenchRow> run_decode_step_bench(const DecodeStepBenchOptions& options,
                                                      const at::Device& device);

}  // namespace prime::eval
