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

  // Rotates q [B,T,Hq,D] and k [B,T,Hkv,D] at absolute positions start, ..., start+T-1.
  // Returns rotated copies in their dtype; the angles are computed in fp32 (fp64 when q is fp64).
  // The last call's cos/sin are kept, so the layers of one model sharing this Rope compute them
  // once per forward: not for concurrent use from several threads.
  std::pair<at::Tensor, at::Tensor> apply(const at::Tensor& q, const at::Tensor& k, int64_t start) const;

  // The same at per-token positions [B, T] (int64, on q's device), e.g. positions inside packed
  // documents; max_position = the largest position + 1 (dynamic rope grows its base from it).
  std::pair<at::Tensor, at::Tensor> apply_positions(const at::Tensor& q, const at::Tensor& k, const at::Tensor& positions,
                                                    int64_t max_position) const;

  // The same for one token per sequence at the position held in `position` (int64 [1] on q's
  // device), without reading it on the host: the angles are computed on the device, so a CUDA
  // graph that captures this call is right at every replay. Kept per (position tensor, version),
  // so the layers of one decode step compute them once.
  std::pair<at::Tensor, at::Tensor> apply_at(const at::Tensor& q, const at::Tensor& k, const at::Tensor& position) const;

  // The {cos, sin} tables [1,1,1,D] apply_at rotates q by (computed and kept as it keeps them),
  // for a fused op that rotates by itself (the attention layer's q/k norm and rotation).
  std::pair<at::Tensor, at::Tensor> angles_at(const at::Tensor& q, const at::Tensor& position) const;

  // Inverse frequencies [D/2] and the cos/sin scale for a call whose largest position + 1 is
  // seq_len (only dynamic rope depends on it).
  std::pair<at::Tensor, double> inv_freq(int64_t seq_len) const;

 private:
  io::RopeConfig config_;
  int64_t head_dim_;
  int64_t max_position_embeddings_;
  at::Tensor base_inv_freq_;  // fp32 [D/2], static types only
  double attention_scaling_ = 1.0;

  struct Angles {
    int64_t start = -1, steps = -1;
    at::Device device = at::kCPU;
    at::ScalarType dtype = at::kFloat;
    at::Tensor cos, sin;  // [1,T,1,D]
  };
  mutable Angles last_;

  struct StepAngles {
    const void* position = nullptr;
    int64_t version = -1;
    at::ScalarType dtype = at::kFloat;
    at::Tensor inv_freq, exponents;  // on the position's device, in dtype (made before any capture)
    at::Tensor cos, sin;             // [1,1,1,D]
  };
  mutable StepAngles step_;
  std::pair<at::Tensor, at::Tensor> rotate(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                           const at::Tensor& sin) const;
};

}  // namespace prime::model
