// A decode benchmark's context without its prefill. Measuring decode at long context and large
// batch (the KV-saturated points hybrids exist for) would otherwise cost B x P prefill tokens
// first: 786K tokens for the 8B shape at 128K and B = 6. A decode step's work depends on the
// cache's shapes and slots, not on the values in them, so filling the cache with random keys,
// values and states at the right length gives a step that does exactly what a step after a real
// prefill does (same tensors, same slots, same masks, same bytes); its tokens are meaningless.
// `prime-bench decode --context synthetic` uses it.
#pragma once

#include <cstdint>

#include "model/hybrid_model.h"

namespace prime::eval {

// Fills a fresh cache of `model` (no token seen yet) as if `tokens` tokens had been prefilled:
// every KV cache gets random keys/values at positions 0..tokens-1 (an SWA cache keeps what its
// window keeps), every SSM conv and recurrent state random values, every layer length = tokens.
// The cache's batch is its own; KV values are in the model's activation dtype. UserError when
// the cache is not fresh or tokens < 1.
void fill_synthetic_context(const model::HybridModel& model, model::ModelCache& cache, int64_t tokens);

}  // namespace prime::eval
