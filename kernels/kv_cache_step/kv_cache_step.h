// The static KV cache's per-step write, fused: the decode step of an attention or SWA layer on a
// static cache (model::KvCache::write_step) puts the token's key and value into its slot (a ring
// past the sinks for a window), records the slot's position and builds the visibility mask the
// attention reads. The torch form is seven small kernels per layer (the slot's remainder, three
// index_copy_, three comparisons for the mask): ~17 µs of a 4K graphed decode step of the 8B
// shape per layer at B = 1, where the layer's attention itself takes 7 µs. Here one launch.
// Inference only (the predicate says so).
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// The cache's geometry: slots [0, ring_start) hold positions below ring_start for good, the
// others a ring (ring_start = 0: slot = position % slots). window > 0: a query sees the keys of
// the last `window` positions, plus positions below `sinks`.
struct KvStepGeometry {
  int64_t ring_start = 0, window = 0, sinks = 0;
};

// Whether kv_cache_step serves these operands: policy Auto, no gradient wanted, keys and values
// [B, Hkv, S, D] contiguous CUDA tensors of one dtype (any: the kernel copies), k and v
// [B, Hkv, 1, D] of that dtype and device (any strides), slot_positions int64 [S] and position
// an int64 one-element tensor on that device.
bool kv_cache_step_apply(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& slot_positions, const at::Tensor& position);

// With p = position: slot = p < ring_start ? p : (p - ring_start) % (S - ring_start) + ring_start;
// keys[:, :, slot] = k, values[:, :, slot] = v, slot_positions[slot] = p; returns visible [S] bool:
// 0 <= slot_positions[s] <= p, and with a window (p - slot_positions[s] < window or
// slot_positions[s] < sinks) -- what the torch form of write_step computes, bit for bit.
at::Tensor kv_cache_step(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& slot_positions, const at::Tensor& position,
                         const KvStepGeometry& geometry);

}  // namespace prime::kernels
