// Helpers of the chunked SSM forms (GKA, GDN, Mamba-2): time split into chunks and merged back,
// the causal in-chunk decay matrix built from the per-step log decays, and the chunk-start scan
// of the states that are linear in themselves.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace prime::model::chunks {

// [B,T,H,...] -> [B,H,N,C,...] with T zero-padded at the end to N*C.
inline at::Tensor split(const at::Tensor& x, int64_t chunk) {
  const int64_t length = x.size(1);
  const int64_t padded = (length + chunk - 1) / chunk * chunk;
  at::Tensor moved = x.movedim(1, 2);  // [B,H,T,...]
  if (padded != length) {
    std::vector<int64_t> pad(2 * (moved.dim() - 2), 0);
    pad.back() = padded - length;  // constant_pad_nd lists pads from the last dim backwards
    moved = at::constant_pad_nd(moved, pad);
  }
  std::vector<int64_t> shape(moved.sizes().begin(), moved.sizes().end());
  shape[2] = padded / chunk;
  shape.insert(shape.begin() + 3, chunk);
  return moved.reshape(shape);
}

// [B,H,N,C,D] -> [B,T,H,D], dropping the padding of split().
inline at::Tensor merge(const at::Tensor& x, int64_t length) {
  const int64_t batch = x.size(0), heads = x.size(1), dim = x.size(4);
  return x.reshape({batch, heads, x.size(2) * x.size(3), dim}).narrow(2, 0, length).transpose(1, 2);
}

// log_decay [..., C]: the per-step log decays of each chunk. Returns [..., C, C] holding
// exp(sum_{j<k<=t} log_decay_k) where j <= t, 0 elsewhere. The sums are taken directly rather
// than as differences of one cumulative sum, which would cancel badly in fp32 once the
// cumulative decay is large (long chunks, strong decay). The mask goes on before the exp: above
// the diagonal the sum is meaningless and could overflow.
inline at::Tensor segment_decay(const at::Tensor& log_decay) {
  const int64_t chunk = log_decay.size(-1);
  const auto bool_options = log_decay.options().dtype(at::kBool);
  const at::Tensor below = at::ones({chunk, chunk}, bool_options).tril(-1);  // k > j
  // [..., k, j] = log_decay_k for k > j, else 0; summing over k <= t gives row t.
  const at::Tensor per_step = log_decay.unsqueeze(-1).masked_fill(below.logical_not(), 0.0);
  const at::Tensor sums = at::cumsum(per_step, -2);
  const at::Tensor keep = at::ones({chunk, chunk}, bool_options).tril();
  return at::exp(sums.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity()));
}

// sum_{k>t} log_decay_k over the chunk (the decay from step t to the chunk end), [..., C],
// summed from the end for the same reason.
inline at::Tensor suffix_sum(const at::Tensor& log_decay) {
  return at::flip(at::cumsum(at::flip(log_decay, {-1}), -1), {-1}) - log_decay;
}

// The state entering every chunk of a recurrence linear in its state, and the final state:
//   s_0 = initial,  s'_c = keep_c s_c,  starts_c = s'_c,  s_{c+1} = decay_c s'_c + contribution_c.
// contribution [B,H,n,D1,D2] (chunk c's own end state from zero), decay [B,H,n] (chunk c's whole
// decay), initial [B,H,D1,D2] or broadcastable to it (undefined: zero), keep [n] (0 at a chunk
// whose state restarts, 1 elsewhere; undefined: no restart). Returns ([B,H,n,D1,D2], [B,H,D1,D2]).
// One autograd node whose backward is the reverse scan (ssm_chunk_scan.cpp).
std::pair<at::Tensor, at::Tensor> state_scan(const at::Tensor& initial, const at::Tensor& contribution,
                                             const at::Tensor& decay, const at::Tensor& keep);

}  // namespace prime::model::chunks
