#include "model/feed_forward.h"

#include <ATen/core/grad_mode.h>

#include "model/linear.h"
#include "util/error.h"

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace prime::model {

SwigluMlp::SwigluMlp(const TensorMap& weights, const std::string& prefix, int64_t hidden, int64_t intermediate)
    : gate_(take_weight(weights, prefix, "gate_proj.weight", {intermediate, hidden})),
      up_(take_weight(weights, prefix, "up_proj.weight", {intermediate, hidden})),
      down_(take_weight(weights, prefix, "down_proj.weight", {hidden, intermediate})) {}

at::Tensor SwigluMlp::forward(const at::Tensor& x) const {
  // silu(x gateᵀ) * (x upᵀ): one launch at decode, the torch ops elsewhere (model/linear.h).
  return model::linear(model::gated_linear_silu(x, gate_, up_), down_);
}

namespace {

// Why at::_grouped_mm would read the host, or reject the operands, for experts stacked as
// `stacked` (empty when it does neither). Its CUDA kernel without host reads (CUTLASS) is bf16 on
// sm_90/sm_100 only; every other CUDA case loops over the groups after copying their ends to the
// host. It takes fp32, bf16 and fp16, and rows whose stride is a multiple of 16 bytes.
std::string grouped_mm_blocker(const at::Tensor& stacked, int64_t hidden, int64_t intermediate) {
  const auto dtype = stacked.scalar_type();
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf)
    return std::string("the grouped expert GEMM has no ") + c10::toString(dtype) + " form";
  const int64_t per_16_bytes = 16 / static_cast<int64_t>(stacked.element_size());
  if (hidden % per_16_bytes != 0 || intermediate % per_16_bytes != 0)
    return "the grouped expert GEMM needs hidden and moe_intermediate sizes of a multiple of 16 bytes";
  if (stacked.device().is_cpu()) return "";
  if (!stacked.device().is_cuda()) return "the grouped expert GEMM runs on the CPU and CUDA only";
  if (dtype != at::kBFloat16)
    return std::string("the grouped expert GEMM reads the host on CUDA except in bf16 (experts in ") +
           c10::toString(dtype) + ")";
#ifdef PRIME_WITH_CUDA
  const int major = at::cuda::getDeviceProperties(stacked.device().index())->major;
  if (major != 9 && major != 10)
    return "the grouped expert GEMM reads the host except on sm_90/sm_100 GPUs (this is sm_" + std::to_string(major) +
           "x)";
  return "";
#else
  return "this build has no CUDA support of its own";
#endif
}

}  // namespace

MoeBlock::MoeBlock(const TensorMap& weights, const std::string& router_name,
                   const std::vector<std::string>& expert_prefixes, int64_t hidden, const io::MoeConfig& config)
    : router_(take_weight(weights, "", router_name, {config.num_experts, hidden})), config_(config) {
  const int64_t intermediate = config.moe_intermediate_size;
  std::vector<at::Tensor> gates, ups, downs;
  for (const auto& prefix : expert_prefixes) {
    experts_.push_back(std::make_unique<SwigluMlp>(weights, prefix, hidden, intermediate));
    gates.push_back(weights.at(prefix + "gate_proj.weight"));
    ups.push_back(weights.at(prefix + "up_proj.weight"));
    downs.push_back(weights.at(prefix + "down_proj.weight"));
  }
  // Views of the stacks stack_expert_tensors made at load (never a copy: that would double the
  // experts' memory); separate tensors (a CPU load, trained experts) leave the loop form only.
  gate_ = stacked_view(gates);
  up_ = stacked_view(ups);
  down_ = stacked_view(downs);
  if (!gate_.defined() || !up_.defined() || !down_.defined())
    grouped_blocker_ = "its experts are separate tensors, not stacked at load (a CPU load, or trained experts)";
  else
    grouped_blocker_ = grouped_mm_blocker(gate_, hidden, intermediate);
}

std::pair<at::Tensor, at::Tensor> MoeBlock::route(const at::Tensor& tokens) const {
  at::Tensor probs = at::softmax(model::linear(tokens, router_).to(at::kFloat), -1);
  auto [top_weights, top_experts] = probs.topk(config_.num_experts_per_tok, -1);
  if (config_.norm_topk_prob) top_weights = top_weights / top_weights.sum(-1, /*keepdim=*/true);
  return {top_weights.to(tokens.scalar_type()), top_experts};
}

at::Tensor MoeBlock::forward(const at::Tensor& x) const {
  const bool recorded = at::GradMode::is_enabled() && (x.requires_grad() || router_.requires_grad());
  if (grouped_applies() && !recorded && x.scalar_type() == gate_.scalar_type()) return forward_grouped(x);
  return forward_looped(x);
}

at::Tensor MoeBlock::forward_looped(const at::Tensor& x) const {
  const auto sizes = x.sizes();
  at::Tensor tokens = x.reshape({-1, sizes.back()});
  if (tokens.size(0) == 0) return at::zeros_like(x);
  const auto [top_weights, top_experts] = route(tokens);
  // The (token, slot) pairs sorted by expert on the device, the per-expert counts read once: one
  // host sync per layer, not one per expert (a nonzero() per expert waits for the device each
  // time). The rows are gathered once and split per expert, and the experts' outputs joined back
  // before one scatter: under autograd, a gather or slice per expert would each take a gradient
  // the size of all the tokens (E passes over them), the split and the join take one.
  const int64_t slots = top_experts.size(1);
  const at::Tensor flat_experts = top_experts.reshape({-1});
  const at::Tensor order = at::argsort(flat_experts, /*stable=*/true);
  const at::Tensor sorted_tokens = at::div(order, slots, "floor");
  const at::Tensor sorted_weights = top_weights.reshape({-1}).index_select(0, order).unsqueeze(1);
  const at::Tensor counts = at::bincount(flat_experts, {}, config_.num_experts).cpu();
  const std::vector<int64_t> per_expert(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + config_.num_experts);
  const std::vector<at::Tensor> groups = tokens.index_select(0, sorted_tokens).split_with_sizes(per_expert);
  std::vector<at::Tensor> outputs;
  for (int64_t expert = 0; expert < config_.num_experts; ++expert)
    if (per_expert[static_cast<size_t>(expert)] > 0) outputs.push_back(experts_[expert]->forward(groups[expert]));
  return at::zeros_like(tokens).index_add_(0, sorted_tokens, at::cat(outputs) * sorted_weights).reshape(sizes);
}

at::Tensor MoeBlock::forward_grouped(const at::Tensor& x) const {
  if (!grouped_applies()) throw internal_error("grouped MoE form called where it does not apply: ", grouped_blocker_);
  const auto sizes = x.sizes();
  const at::Tensor tokens = x.reshape({-1, sizes.back()});
  const auto [top_weights, top_experts] = route(tokens);
  const int64_t count = tokens.size(0), slots = top_experts.size(1);
  if (count == 0) return at::zeros_like(x);
  const at::Tensor flat_experts = top_experts.reshape({-1});
  const at::Tensor order = at::argsort(flat_experts, /*stable=*/true);
  // Group e's rows end where the sorted experts pass e. (bincount would read the largest expert
  // id on the host to size its output on CUDA; searchsorted reads nothing.)
  const at::Tensor ends = at::searchsorted(flat_experts.index_select(0, order),
                                           at::arange(config_.num_experts, flat_experts.options()),
                                           /*out_int32=*/true, /*right=*/true);
  const at::Tensor rows = tokens.index_select(0, at::div(order, slots, "floor"));
  // _grouped_mm(a, b): a [rows, k] times b [E, k, n] per group; the [E, n, k] stacks transposed
  // are column-major operands it takes as they are.
  const at::Tensor gate = at::_grouped_mm(rows, gate_.transpose(1, 2), ends);
  const at::Tensor up = at::_grouped_mm(rows, up_.transpose(1, 2), ends);
  const at::Tensor sorted_out = at::_grouped_mm(at::silu(gate) * up, down_.transpose(1, 2), ends);
  // Back to (token, slot) order, each row written once (index_add_ of all pairs at once would add
  // a token's k rows in a CUDA-atomic order: graph replays would not repeat eager steps bit for
  // bit), then the weighted sum over the k slots.
  const at::Tensor pairs = at::empty(sorted_out.sizes(), sorted_out.options()).index_copy_(0, order, sorted_out);
  return (pairs.view({count, slots, -1}) * top_weights.unsqueeze(-1)).sum(1).reshape(sizes);
}

}  // namespace prime::model
