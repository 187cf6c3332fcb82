// Rotary position embeddings with the rope types transformers implements for our families:
// default, linear, llama3, yarn and dynamic (NTK). The rotate-half layout: the head dim is split
// in two halves, (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
#pragma once

#include <ATen/ATen.h>

#include "io/model_config.h"

namespace prime::model {

class Rope {
 public:
  Rope(const io::RopeConfig& config, int64_t head_dim, int64_t max_position_embeddings);

  // Rotates q [B,T,Hq,D] and k [B,T,Hkv,D] in place of a copy for the given absolute positions
  // [T] (int64). Returns {q, k} in their dtype; the angles are computed in fp32 (or fp64 when q
  // is fp64).
  std::pair<at::Tensor, at::Tensor> apply(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& positions) const;

  // Inverse frequencies [D/2] and the cos/sin scale for a call whose largest position + 1 is
  // seq_len (only dynamic rope depends on it).
  std::pair<at::Tensor, double> inv_freq(int64_t seq_len) const;

 private:
  io::RopeConfig config_;
  int64_t head_dim_;
  int64_t max_position_embeddings_;
  at::Tensor base_inv_freq_;  // fp64 [D/2], static types only
  double attention_scaling_ = 1.0;
};

}  // namespace prime::model
