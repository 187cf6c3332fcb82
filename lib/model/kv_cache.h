// The KV cache of an attention or SWA layer, in two modes.
// Growing (prefill and plain decode): keys/values after RoPE, [B, Hkv, capacity, D], with their
// positions on the host; storage grows by doubling past a reserve, and keys older than the window
// (except sinks) are dropped so an SWA layer's cache stays bounded.
// Static (decode steps that a CUDA graph can replay): a fixed set of slots allocated once, whose
// positions live on the device, written at the slot of a device-side position. Full attention has
// one slot per position up to max_tokens; a window has the sinks, then a ring of `window` slots.
#pragma once

#include <ATen/ATen.h>

#include "model/mixer.h"

namespace prime::model {

class KvCache : public LayerCache {
 public:
  KvCache(int64_t kv_heads, int64_t head_dim, int64_t window, int64_t sink_tokens)
      : kv_heads_(kv_heads), head_dim_(head_dim), window_(window), sink_tokens_(sink_tokens) {}
  int64_t bytes_per_sequence() const override;

  // Growing mode: the first allocation holds at least the keys `max_tokens` tokens leave stored
  // (for a window: the sinks, the window and one eviction batch), so decoding up to max_tokens
  // never reallocates.
  void reserve(int64_t max_tokens);
  // Appends k, v [B, Hkv, T, D] at positions length(), length()+1, ...
  void append(const at::Tensor& k, const at::Tensor& v);
  at::Tensor keys() const { return keys_.narrow(2, 0, stored_); }
  at::Tensor values() const { return values_.narrow(2, 0, stored_); }
  at::Tensor positions() const { return positions_.narrow(0, 0, stored_); }
  // Drops keys the next query cannot see (outside the window and not a sink).
  void evict_outside_window();

  // Switches a cache that holds at least one token to static mode for up to max_tokens tokens in
  // all, keeping the keys later queries can still see. `position` (int64 [1] on the cache's device,
  // shared by the model's layers) holds the next token's position; the model advances it.
  void make_static(int64_t max_tokens, const at::Tensor& position);
  bool is_static() const { return position_.defined(); }
  const at::Tensor& position() const { return position_; }
  struct StepView {
    at::Tensor keys, values;  // [B, Hkv, slots, D]
    at::Tensor visible;       // [slots] bool: what the query at `position` sees
  };
  // Static mode: writes k, v [B, Hkv, 1, D] at the slot of `position` (no host sync) and returns
  // every slot with its visibility for that query.
  StepView write_step(const at::Tensor& k, const at::Tensor& v);

 private:
  int64_t kv_heads_, head_dim_, window_, sink_tokens_;
  int64_t reserve_ = 0;
  int64_t stored_ = 0;  // tokens held (growing mode), slots (static mode)
  at::Tensor keys_, values_, positions_;
  // Static mode: slot i holds position slot_positions_[i] (-1: empty); positions below ring_start_
  // (the sinks) have their own slots, later ones share the ring of slots [ring_start_, stored_).
  at::Tensor position_, slot_positions_;
  int64_t ring_start_ = 0;
};

// One query token per sequence against a static cache's slots: q [B, Hq, 1, D] (Hq a multiple of
// Hkv, query head h reading kv head h / (Hq/Hkv)), keys/values [B, Hkv, S, D], visible [S].
// Scores and softmax in fp32; returns [B, Hq, 1, D] in q's dtype. On CUDA, kernels/attention_decode
// where it applies; the torch form (two batched matmuls around a softmax) otherwise.
at::Tensor attend_one_token(const at::Tensor& q, const KvCache::StepView& view, double scale);

}  // namespace prime::model
