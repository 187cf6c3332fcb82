#include "model/feed_forward.h"

namespace prime::model {

SwigluMlp::SwigluMlp(const TensorMap& weights, const std::string& prefix, int64_t hidden, int64_t intermediate)
    : gate_(take_weight(weights, prefix, "gate_proj.weight", {intermediate, hidden})),
      up_(take_weight(weights, prefix, "up_proj.weight", {intermediate, hidden})),
      down_(take_weight(weights, prefix, "down_proj.weight", {hidden, intermediate})) {}

at::Tensor SwigluMlp::forward(const at::Tensor& x) const {
  return at::linear(at::silu(at::linear(x, gate_)) * at::linear(x, up_), down_);
}

MoeBlock::MoeBlock(const TensorMap& weights, const std::string& router_name,
                   const std::vector<std::string>& expert_prefixes, int64_t hidden, const io::MoeConfig& config)
    : router_(take_weight(weights, "", router_name, {config.num_experts, hidden})), config_(config) {
  for (const auto& prefix : expert_prefixes)
    experts_.push_back(std::make_unique<SwigluMlp>(weights, prefix, hidden, config.moe_intermediate_size));
}

at::Tensor MoeBlock::forward(const at::Tensor& x) const {
  const auto sizes = x.sizes();
  at::Tensor tokens = x.reshape({-1, sizes.back()});
  at::Tensor probs = at::softmax(at::linear(tokens, router_).to(at::kFloat), -1);
  auto [top_weights, top_experts] = probs.topk(config_.num_experts_per_tok, -1);
  if (config_.norm_topk_prob) top_weights = top_weights / top_weights.sum(-1, /*keepdim=*/true);
  top_weights = top_weights.to(x.scalar_type());
  at::Tensor out = at::zeros_like(tokens);
  // Gather the tokens routed to each expert so each expert runs one matmul. The (token, slot)
  // pairs are sorted by expert on the device and the per-expert counts read once: one host sync
  // per layer, not one per expert (a nonzero() per expert waits for the device each time).
  const int64_t slots = top_experts.size(1);
  const at::Tensor flat_experts = top_experts.reshape({-1});
  const at::Tensor order = at::argsort(flat_experts, /*stable=*/true);
  const at::Tensor sorted_tokens = at::div(order, slots, "floor");
  const at::Tensor sorted_weights = top_weights.reshape({-1}).index_select(0, order).unsqueeze(1);
  const at::Tensor counts = at::bincount(flat_experts, {}, config_.num_experts).cpu();
  const int64_t* count = counts.data_ptr<int64_t>();
  for (int64_t expert = 0, begin = 0; expert < config_.num_experts; begin += count[expert], ++expert) {
    if (count[expert] == 0) continue;
    const at::Tensor token_index = sorted_tokens.narrow(0, begin, count[expert]);
    const at::Tensor expert_out = experts_[expert]->forward(tokens.index_select(0, token_index)) *
                                  sorted_weights.narrow(0, begin, count[expert]);
    out.index_add_(0, token_index, expert_out);
  }
  return out.reshape(sizes);
}

}  // namespace prime::model
