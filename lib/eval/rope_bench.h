// Timing of the fused rotary embedding (kernels/rope) against the torch form it replaces
// (model::Rope's rotate under policy Torch), the same Rope, q and k in one run, for prime-bench's
// kernel tables. Memory bound: the floor is reading q and k once and writing them once (plus the
// fp32 cos/sin rows). Timed two ways: per call in a CUDA graph of queued calls (as a graphed
// decode step runs it: no launch overhead) and eagerly (each call launched from the host).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace prime::eval {

struct RopeBenchOptions {
  // (B, T): one decode token at B = 1 and 64, one 8K prefill.
  std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 1}, {64, 1}, {1, 8192}};
  // The Qwen3-8B shape's attention: 32 query heads, 8 KV heads, head dim 128, bf16.
  int64_t query_heads = 32, kv_heads = 8, head_dim = 128;
  at::ScalarType dtype = at::kBFloat16;
  int warmup = 3, repeats = 7;
  int calls_per_repeat = 20;  // calls queued (or captured) per timed run
};

struct RopeBenchRow {
  std::string shape;  // "(B,T)=(..) Hq/Hkv/D dtype"
  double floor_bytes = 0;  // q and k read and written, cos and sin read
  double kernel_graph_us = 0, torch_graph_us = 0;  // per call, replayed CUDA graph
  double kernel_eager_us = 0, torch_eager_us = 0;  // per call, launched from the host
  double kernel_graph_gbps = 0, torch_graph_gbps = 0;  // floor bytes / graph time
};

// Needs a CUDA device and a build with the kernels (else a UserError).
std::vector<RopeBenchRow> run_rope_bench(const RopeBenchOptions& options, const at::Device& device);

// The decode step's q_norm + k_norm + rotation at the one-token shapes of options.shapes (T = 1),
// as the attention layer runs it with a static cache: one launch (kernels::rope_norm_rotate) vs
// the norms' kernel twice and the rotation's kernel (model::rms_norm, Rope::apply_at) vs their
// torch forms (policy Torch), per call in a replayed CUDA graph.
struct RopeNormBenchRow {
  std::string shape;
  double fused_graph_us = 0, separate_graph_us = 0, torch_graph_us = 0;
};

std::vector<RopeNormBenchRow> run_rope_norm_bench(const RopeBenchOptions& options, const at::Device& device);

}  // namespace prime::eval
