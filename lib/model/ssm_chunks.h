// Helpers of the chunked SSM forms (GDN, Mamba-2): time split into chunks, and the causal
// in-chunk decay matrix built from cumulative log decays.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
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

// gamma [..., C] = cumulative log decay within each chunk. Returns [..., C, C] with
// exp(gamma_t - gamma_j) where j <= t, 0 elsewhere. The mask goes on before the exp: above the
// diagonal the exponent is positive and could overflow.
inline at::Tensor segment_decay(const at::Tensor& gamma) {
  const int64_t chunk = gamma.size(-1);
  const at::Tensor diff = gamma.unsqueeze(-1) - gamma.unsqueeze(-2);
  const at::Tensor keep =
      at::ones({chunk, chunk}, gamma.options().dtype(at::kBool)).tril();
  return at::exp(diff.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity()));
}

}  // namespace prime::model::chunks
