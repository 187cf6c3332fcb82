#include "model/kv_cache.h"

#include <algorithm>
#include <limits>

#include "kernels/attention_decode/attention_decode.h"
#include "kernels/kv_cache_step/kv_cache_step.h"
#include "util/error.h"

namespace prime::model {

int64_t KvCache::bytes_per_sequence() const {
  if (!keys_.defined()) return 0;
  return 2 * stored_ * kv_heads_ * head_dim_ * static_cast<int64_t>(keys_.element_size());
}

void KvCache::reserve(int64_t max_tokens) {
  // A window keeps the sinks and window-1 recent keys, plus up to 64 before an eviction, plus the
  // token being appended.
  reserve_ = window_ > 0 ? std::min(max_tokens, sink_tokens_ + window_ + 64) : max_tokens;
}

void KvCache::append(const at::Tensor& k, const at::Tensor& v) {
  PRIME_CHECK(!is_static(), "a static KV cache takes one token per step through write_step");
  const int64_t incoming = k.size(2), needed = stored_ + incoming;
  if (!keys_.defined() || needed > keys_.size(2)) {
    const int64_t capacity = needed <= reserve_ ? reserve_ : std::max<int64_t>(2 * needed, 16);
    at::Tensor new_keys = at::empty({k.size(0), kv_heads_, capacity, head_dim_}, k.options());
    at::Tensor new_values = at::empty_like(new_keys);
    // Positions live on the host: masks are built there, and reading them costs no device sync.
    at::Tensor new_positions = at::empty({capacity}, at::TensorOptions().dtype(at::kLong));
    if (stored_ > 0) {
      new_keys.narrow(2, 0, stored_).copy_(keys());
      new_values.narrow(2, 0, stored_).copy_(values());
      new_positions.narrow(0, 0, stored_).copy_(positions());
    }
    keys_ = new_keys, values_ = new_values, positions_ = new_positions;
  }
  keys_.narrow(2, stored_, incoming).copy_(k);
  values_.narrow(2, stored_, incoming).copy_(v);
  positions_.narrow(0, stored_, incoming).copy_(at::arange(tokens, tokens + incoming, positions_.options()));
  stored_ += incoming;
  tokens += incoming;
}

void KvCache::evict_outside_window() {
  // The next query can see the sinks and the last window-1 keys; evict in batches of 64.
  if (window_ <= 0 || is_static()) return;
  const int64_t keep_recent = window_ - 1;
  const int64_t sinks = std::min(sink_tokens_, tokens);
  if (stored_ <= sinks + keep_recent + 64) return;
  const int64_t recent_start = stored_ - keep_recent;
  at::Tensor index = at::cat({at::arange(0, sinks, positions_.options()),
                              at::arange(recent_start, stored_, positions_.options())});
  const at::Tensor device_index = index.to(keys_.device());
  at::Tensor kept_keys = keys().index_select(2, device_index), kept_values = values().index_select(2, device_index);
  at::Tensor kept_positions = positions().index_select(0, index);
  stored_ = index.size(0);
  keys_.narrow(2, 0, stored_).copy_(kept_keys);
  values_.narrow(2, 0, stored_).copy_(kept_values);
  positions_.narrow(0, 0, stored_).copy_(kept_positions);
}

void KvCache::make_static(int64_t max_tokens, const at::Tensor& position) {
  PRIME_CHECK(!is_static(), "KV cache is already static");
  PRIME_CHECK(keys_.defined() && tokens > 0, "a static KV cache starts after a prefill of at least one token");
  PRIME_CHECK(max_tokens > tokens, "static KV cache without room (HybridModel::make_static checks this)");
  const int64_t sinks = window_ > 0 ? std::min(sink_tokens_, max_tokens) : 0;
  const int64_t slots = window_ > 0 ? std::min(max_tokens, sinks + window_) : max_tokens;
  // Keep what the query at position `tokens` and later ones can see.
  const at::Tensor held = positions();
  at::Tensor keep = at::ones({stored_}, at::kBool);
  if (window_ > 0) keep = (held < sinks).logical_or(held > tokens - window_);
  const at::Tensor index = keep.nonzero().squeeze(1);
  const at::Tensor kept = held.index_select(0, index);
  const at::Tensor slot = at::where(kept < sinks, kept, (kept - sinks).remainder(slots - sinks) + sinks);
  const at::Tensor device_index = index.to(keys_.device()), device_slot = slot.to(keys_.device());
  // Empty slots hold zeros, not garbage: a masked slot's probability is 0, and 0 * NaN is NaN.
  at::Tensor new_keys = at::zeros({keys_.size(0), kv_heads_, slots, head_dim_}, keys_.options());
  at::Tensor new_values = at::zeros_like(new_keys);
  new_keys.index_copy_(2, device_slot, keys().index_select(2, device_index));
  new_values.index_copy_(2, device_slot, values().index_select(2, device_index));
  slot_positions_ = at::full({slots}, -1, at::kLong).index_copy_(0, slot, kept).to(keys_.device());
  keys_ = new_keys, values_ = new_values, positions_ = at::Tensor();
  stored_ = slots;
  ring_start_ = sinks;
  position_ = position;
}

KvCache::StepView KvCache::write_step(const at::Tensor& k, const at::Tensor& v) {
  PRIME_CHECK(is_static() && k.size(2) == 1, "write_step needs a static cache and one token");
  const at::Tensor& p = position_;
  // On CUDA one kernel does the seven small ops below.
  if (kernels::kv_cache_step_apply(keys_, values_, k, v, slot_positions_, p)) {
    const at::Tensor visible = kernels::kv_cache_step(keys_, values_, k, v, slot_positions_, p,
                                                      {ring_start_, window_, sink_tokens_});
    tokens += 1;
    return {keys_, values_, visible};
  }
  const at::Tensor slot =
      ring_start_ > 0 ? at::where(p < ring_start_, p, (p - ring_start_).remainder(stored_ - ring_start_) + ring_start_)
                      : p.remainder(stored_);
  keys_.index_copy_(2, slot, k);
  values_.index_copy_(2, slot, v);
  slot_positions_.index_copy_(0, slot, p);
  at::Tensor visible = (slot_positions_ >= 0).logical_and(slot_positions_ <= p);
  if (window_ > 0) {
    at::Tensor in_window = (p - slot_positions_) < window_;
    if (sink_tokens_ > 0) in_window = in_window.logical_or(slot_positions_ < sink_tokens_);
    visible = visible.logical_and(in_window);
  }
  tokens += 1;
  return {keys_, values_, visible};
}

at::Tensor attend_one_token(const at::Tensor& q, const KvCache::StepView& view, double scale) {
  const int64_t batch = q.size(0), q_heads = q.size(1), dim = q.size(3), kv_heads = view.keys.size(1);
  PRIME_CHECK(q.size(2) == 1 && q_heads % kv_heads == 0);
  // On CUDA the split-K kernel reads the slots once for all query heads of a KV head.
  if (kernels::attention_decode_apply(q, view.keys, view.values, view.visible))
    return kernels::attention_decode(q, view.keys, view.values, view.visible, scale);
  // [B, Hkv, G, D]: the G query heads that share a kv head read it in one batched matmul.
  const at::Tensor grouped = q.reshape({batch, kv_heads, q_heads / kv_heads, dim});
  at::Tensor scores = at::matmul(grouped, view.keys.transpose(-1, -2)).to(at::kFloat) * scale;  // [B,Hkv,G,S]
  scores.masked_fill_(view.visible.logical_not(), -std::numeric_limits<float>::infinity());
  const at::Tensor probabilities = at::softmax(scores, -1).to(q.scalar_type());
  return at::matmul(probabilities, view.values).reshape({batch, q_heads, 1, dim});
}

}  // namespace prime::model
