// The largest decode batch that fits a memory budget, for `prime-bench decode --fit-batch`: the
// KV-saturated points hybrids exist for (their cache per sequence is a fraction of a
// Transformer's, so the same memory holds more sequences) in one command.
//
// A sequence's cache is measured, not modelled: a one-sequence cache of the model is filled with
// a synthetic context of the whole run's length (prompt + warm-up + timed steps), so KV caches of
// every kind (full, windowed with sinks) and SSM states count exactly as a run holds them. Then
//   B = floor((budget - weights - reserve) / (cache + activations per sequence)),
// the reserve being 8% of the budget (allocator slack, library workspaces, the graph's pool) and
// the activations a decode step's logits and hidden rows. On CUDA a point that still runs out of
// memory is retried at 7/8 of its batch (run_decode_bench), so the batch reported is one that ran.
#pragma once

#include <cstdint>

#include "eval/decode_bench.h"

namespace prime::eval {

// Bytes per sequence of a model cache: KV caches (they grow with the context) and the rest (SSM
// conv and recurrent states, fixed size).
struct CacheBytes {
  int64_t kv = 0, state = 0;
};
CacheBytes cache_bytes(const model::ModelCache& cache);

struct BatchFit {
  int64_t batch = 0;  // >= 1
  int64_t budget_bytes = 0, weight_bytes = 0, reserve_bytes = 0;
  int64_t cache_bytes_per_sequence = 0, activation_bytes_per_sequence = 0;
};

// The fit for `prompt` tokens of context under options (memory_gib, or on CUDA the device's
// total memory when it is 0). UserError when the budget is unknown (CPU without memory_gib) or
// does not hold the weights and one sequence.
BatchFit fit_decode_batch(BenchModel& bench, int64_t prompt, const DecodeBenchOptions& options);

// Returns the caching allocator's free blocks to the device (CUDA; nothing elsewhere), so a
// retry after an out-of-memory starts from what is really free.
void release_cached_memory(const at::Device& device);

}  // namespace prime::eval
