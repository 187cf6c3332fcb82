// The non-mixer parts of a decoder layer: the SwiGLU MLP and the Qwen3-MoE sparse block (the
// block norms are model/rms_norm.h's rms_norm, included here for the decoder code).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "model/rms_norm.h"
#include "model/weights.h"

namespace prime::model {

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  virtual at::Tensor forward(const at::Tensor& x) const = 0;  // [B,T,d] -> [B,T,d]
};

// down(silu(gate(x)) * up(x)); weights under prefix ("model.layers.3.mlp.").
class SwigluMlp : public FeedForward {
 public:
  SwigluMlp(const TensorMap& weights, const std::string& prefix, int64_t hidden, int64_t intermediate);
  at::Tensor forward(const at::Tensor& x) const override;

 private:
  at::Tensor gate_, up_, down_;
};

// Qwen3-MoE: softmax router over experts (fp32), top-k, optional renormalisation of the k
// weights, weighted sum of SwiGLU experts.
class MoeBlock : public FeedForward {
 public:
  MoeBlock(const TensorMap& weights, const std::string& router_name, const std::vector<std::string>& expert_prefixes,
           int64_t hidden, const io::MoeConfig& config);
  at::Tensor forward(const at::Tensor& x) const override;

 private:
  at::Tensor router_;
  std::vector<std::unique_ptr<SwigluMlp>> experts_;
  io::MoeConfig config_;
};

}  // namespace prime::model
