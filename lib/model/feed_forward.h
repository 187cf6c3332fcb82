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
  // Why forward() without autograd waits for the host (empty when it never does): a CUDA graph
  // cannot capture such a step.
  virtual std::string host_sync_reason() const { return ""; }
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
//
// Two forms of the same sum. The grouped form gathers the (token, slot) pairs in expert order and
// runs each projection of all experts as one at::_grouped_mm, with the group ends computed on the
// device: no host read, so a decode step with it can be captured as a CUDA graph. It needs the
// experts stacked in one [E, ...] tensor per projection (stack_expert_tensors, which
// prepare_weights applies off the CPU) and runs where _grouped_mm itself never reads the host:
// bf16 on sm_90/sm_100 GPUs (elsewhere on CUDA it loops over the groups after reading their
// ends), and on the CPU (where reading them costs nothing). The loop form (one SwiGLU per expert
// after reading the per-expert counts on the host once) runs everywhere else and whenever autograd
// records the forward: _grouped_mm has no CPU backward, and trained experts are separate tensors.
class MoeBlock : public FeedForward {
 public:
  MoeBlock(const TensorMap& weights, const std::string& router_name, const std::vector<std::string>& expert_prefixes,
           int64_t hidden, const io::MoeConfig& config);
  at::Tensor forward(const at::Tensor& x) const override;
  std::string host_sync_reason() const override { return grouped_blocker_; }

  // The two forms, for tests and benchmarks; forward() picks one as described above.
  at::Tensor forward_looped(const at::Tensor& x) const;
  at::Tensor forward_grouped(const at::Tensor& x) const;  // InternalError unless grouped_applies()
  bool grouped_applies() const { return grouped_blocker_.empty(); }

 private:
  // tokens [N, d] -> the k routing weights (in the tokens' dtype) and experts of each token, [N, k].
  std::pair<at::Tensor, at::Tensor> route(const at::Tensor& tokens) const;

  at::Tensor router_;
  std::vector<std::unique_ptr<SwigluMlp>> experts_;  // the map's tensors: views of the stacks when stacked
  at::Tensor gate_, up_, down_;                      // [E, I, d], [E, I, d], [E, d, I] stacks, or undefined
  std::string grouped_blocker_;                      // why the grouped form does not apply; empty when it does
  io::MoeConfig config_;
};

}  // namespace prime::model
