// The token-mixer interface shared by attention, SWA and the SSM layers, and their caches.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>

#include "model/documents.h"

namespace prime::model {

// Decode state of one layer for a batch of sequences: a KV cache for attention, conv + recurrent
// state for an SSM. States of SSMs are always fp32. A mixer writes an SSM state back into the
// cache's own tensors (never replaces them), so a decode step captured as a CUDA graph reads and
// writes the same memory on every replay.
class LayerCache {
 public:
  virtual ~LayerCache() = default;
  // Bytes held per sequence right now (a KV cache grows with length; an SSM state does not).
  virtual int64_t bytes_per_sequence() const = 0;
  // Tokens consumed so far (the next token's position). Host bookkeeping: a replayed CUDA graph
  // runs no host code, so whoever replays one advances it (ModelCache::set_length).
  int64_t length() const { return tokens; }
  int64_t tokens = 0;
};

// Maps a layer's input [B, T, hidden] (after input_layernorm) to its output [B, T, hidden].
class Mixer {
 public:
  virtual ~Mixer() = default;
  // Layer symbol as used in hybrid_override_pattern: "*", "GKA", "GDN", "M2", "SWA".
  virtual std::string symbol() const = 0;
  virtual std::unique_ptr<LayerCache> make_cache(int64_t batch, const at::Device& device) const = 0;
  // cache == nullptr: the sequence starts here and nothing is kept. Otherwise the call continues
  // from the cache's state and leaves it advanced past these T tokens (prefill, or T = 1 decode).
  virtual at::Tensor forward(const at::Tensor& x, LayerCache* cache) = 0;
  // x [B, T, hidden] of packed rows holding several documents (no cache): each document as if
  // run alone. By default each document runs through forward() as its own sequence, which is
  // exact for any causal mixer (a state per sequence, reset at its start); attention overrides
  // it with a block-diagonal mask.
  virtual at::Tensor forward_documents(const at::Tensor& x, const Documents& documents) {
    return run_per_document(documents, x, [this](const at::Tensor& part) { return forward(part, nullptr); });
  }
};

// The three forms every SSM type has, which must agree (see design/ssm-layers.md):
// forward() = chunked parallel form (differentiable, used for training and prefill);
// forward_recurrent() = naive per-token recurrence (the readable reference);
// step() = single-token decode on an explicit state. forward() with a cache and T == 1 uses step().
class SsmMixer : public Mixer {
 public:
  virtual at::Tensor forward_recurrent(const at::Tensor& x, LayerCache* cache) = 0;
  // x [B, 1, hidden]; advances cache by one token.
  virtual at::Tensor step(const at::Tensor& x, LayerCache& cache) = 0;
};

}  // namespace prime::model
