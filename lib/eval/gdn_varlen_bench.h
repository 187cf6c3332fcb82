// Timing of a GDN layer over packed documents: the packed path (GdnMixer::forward_documents:
// short convs with document starts, chunks formed per document) against the per-document default
// (run_per_document: documents padded to power-of-two buckets, gathered and scattered), the same
// layer and inputs in one run, under the kernel policy in force.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace prime::eval {

struct GdnVarlenBenchOptions {
  int64_t batch = 4, tokens = 8192, hidden = 2048, heads = 16, head_dim = 128;
  // Document lengths drawn log-uniformly in [min_length, max_length] (seeded), packed into rows.
  int64_t min_length = 16, max_length = 4096;
  uint64_t seed = 1;
  int warmup = 1, repeats = 3;
  bool backward = true;
};

struct GdnVarlenBenchRow {
  std::string shape;                          // "(B,T,hidden,H,D) bf16, N documents"
  double bucket_tokens = 0, chunk_tokens = 0;  // tokens each path runs the core on / B*T
  double packed_forward_ms = 0, packed_forward_backward_ms = 0;
  double bucketed_forward_ms = 0, bucketed_forward_backward_ms = 0;
};

// bf16 input and weights (the core computes in fp32, as the mixer does). Needs a CUDA device.
GdnVarlenBenchRow run_gdn_varlen_bench(const GdnVarlenBenchOptions& options, const at::Device& device);

}  // namespace prime::eval
