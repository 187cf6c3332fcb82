// Timing of one SSM layer (GDN, GKA or Mamba-2) over packed documents: the packed path (the
// mixer's forward_documents: short convs with document starts, chunks formed per document)
// against the per-document default (run_per_document: documents padded to power-of-two buckets,
// gathered and scattered), the same layer and inputs in one run, under the kernel policy in force.
// The layer is the converted one of a two-layer synthetic Qwen3 (`+convert:TYPE:1:1`): the
// weights prime-convert gives it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace prime::eval {

struct PackedDocumentsBenchOptions {
  std::string type = "GDN";  // GDN, GKA or M2
  int64_t batch = 4, tokens = 8192, hidden = 2048, heads = 16, head_dim = 128;
  // Document lengths drawn log-uniformly in [min_length, max_length] (seeded), packed into rows.
  int64_t min_length = 16, max_length = 4096;
  uint64_t seed = 1;
  int warmup = 1, repeats = 3;
  bool backward = true;
};

struct PackedDocumentsBenchRow {
  std::string type, shape;                     // "(B,T,hidden,H,D) bf16, N documents"
  double bucket_tokens = 0, chunk_tokens = 0;  // tokens each path runs the core on / B*T
  double packed_forward_ms = 0, packed_forward_backward_ms = 0;
  double bucketed_forward_ms = 0, bucketed_forward_backward_ms = 0;
};

// bf16 input and weights (the cores compute in fp32, as the mixers do); fwd+bwd takes the
// gradients of the input and every weight of the layer. prime-bench kernels runs it on CUDA; it
// runs on the CPU too (small shapes: tests).
PackedDocumentsBenchRow run_packed_documents_bench(const PackedDocumentsBenchOptions& options,
                                                   const at::Device& device);

}  // namespace prime::eval
