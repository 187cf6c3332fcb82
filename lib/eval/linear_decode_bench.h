// Timing of the decode projection (kernels/linear_decode) against at::linear (model::linear under
// policy Torch: cuBLAS), the same operands in one run, for prime-bench's kernel tables. Bound by
// reading the weight once: the figure of merit is the weight's bytes over the time, against the
// HBM bandwidth. Each call is timed launched eagerly and replayed in a CUDA graph (what a graphed
// decode step does): eager calls of a few µs of device work are bound by the host's launch path.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace prime::eval {

struct LinearDecodeShape {
  int64_t rows = 1, out_features = 0, in_features = 0;  // x [rows, K], W [N, K]
};

struct LinearDecodeBenchOptions {
  // The Qwen3-8B layer at one token: q and o (4096 x 4096), k and v (1024 x 4096), gate and up
  // (12288 x 4096), down (4096 x 12288), the lm_head (151936 x 4096); and gate/up at 4 tokens.
  std::vector<LinearDecodeShape> shapes = {{1, 4096, 4096},  {1, 1024, 4096},   {1, 12288, 4096},
                                           {1, 4096, 12288}, {1, 151936, 4096}, {4, 12288, 4096}};
  at::ScalarType dtype = at::kBFloat16;
  int warmup = 2, repeats = 5;
  int calls_per_repeat = 20;  // calls queued per timed run, so the synchronisation is amortised
  // Each call reads another copy of W, round robin over at least this many bytes of copies, so W
  // comes from HBM (as in a decode step, where the other layers' weights evict it), not from the
  // 50 MB L2 that holds a whole 4096 x 4096 matrix.
  double rotate_bytes = 512e6;
  double hbm_tbps = 4.8;  // the "% HBM" column's bandwidth (prime-bench: the device's peak)
};

struct LinearDecodeBenchRow {
  std::string shape;  // "rows x N x K dtype"
  double weight_bytes = 0;
  double kernel_ms = 0, torch_ms = 0;      // per eager call, median of the repeats
  double kernel_tbps = 0, torch_tbps = 0;  // weight bytes / time
  double kernel_graph_ms = 0, torch_graph_ms = 0;  // per call in a replayed CUDA graph
  double kernel_graph_tbps = 0;
  double kernel_graph_fraction_of_hbm = 0;  // kernel_graph_tbps / hbm_tbps
  // The kernel's graph time with the other grid (kernel_graph_ms is the default grid's: one wave
  // whose warps take rows round robin; this one: a warp per unit of rows, as many blocks as that
  // takes).
  double kernel_graph_per_unit_ms = 0;
};

// Needs a CUDA device and a build with the kernels (else a UserError).
std::vector<LinearDecodeBenchRow> run_linear_decode_bench(const LinearDecodeBenchOptions& options,
                                                          const at::Device& device);

// The projections of a layer that share x, one launch against separate calls, each per call in a
// replayed CUDA graph (what the decode step does), at one row of x: attention's q, k and v
// (model::linear_group) and the MLP's gate and up ending in silu(gate) * up
// (model::gated_linear_silu). Each call reads another copy of the weights (options.rotate_bytes).
struct LinearDecodeGroupBenchOptions {
  int64_t hidden = 4096;                                // K
  std::vector<int64_t> qkv_features = {4096, 1024, 1024};  // the Qwen3-8B layer's q, k, v
  int64_t intermediate = 12288;                         // its gate and up
  LinearDecodeBenchOptions common;                      // dtype, timing, copies, hbm_tbps
};

struct LinearDecodeGroupBenchRow {
  std::string what;  // "q/k/v 4096+1024+1024 x 4096 bf16" or "gate/up+silu 12288 x 4096 bf16"
  double weight_bytes = 0;
  double grouped_graph_ms = 0;           // one launch, the default grid (one wave)
  double grouped_per_unit_graph_ms = 0;  // one launch, a warp per unit of rows
  double separate_graph_ms = 0;  // the kernel per weight (plus at::silu and the product for gate/up)
  double torch_graph_ms = 0;     // at::linear per weight (plus at::silu and the product): policy Torch
  double grouped_tbps = 0;       // weight bytes / grouped_graph_ms
  double grouped_fraction_of_hbm = 0;
};

// Needs a CUDA device and a build with the kernels (else a UserError).
std::vector<LinearDecodeGroupBenchRow> run_linear_decode_group_bench(const LinearDecodeGroupBenchOptions& options,
                                                                     const at::Device& device);

}  // namespace prime::eval
