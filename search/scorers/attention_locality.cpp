// attention-locality: one traced pass of the teacher; each layer's attention probabilities are
// recomputed from its traced input and its own q/k weights (projections, biases, q/k norms, RoPE
// as the layer applies them), head by head so no [B, H, T, T] tensor is kept. Per layer: the
// attention mass beyond distance W, averaged over heads and the queries that have keys that far
// (t >= W), and the mean entropy of the attention rows (reported). A layer that puts little mass
// beyond W loses little when its context is cut to W or summarised by a state.
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "io/architecture.h"
#include "model/rms_norm.h"
#include "model/rope.h"
#include "search/scorers/scorer.h"
#include "search/scorers/scoring_passes.h"

namespace prime::search {
namespace {

struct LayerQk {
  at::Tensor q_weight, k_weight, q_bias, k_bias, q_norm, k_norm;
};

LayerQk layer_qk(const model::HybridModel& teacher, int64_t layer) {
  const io::ModelConfig& config = teacher.config();
  const auto& arch = io::find_architecture(config.model_type, config.architecture, config.model_type);
  const std::string prefix = arch.name("attention_prefix", layer);
  const auto& weights = teacher.weights();
  auto optional = [&](const std::string& name) {
    auto found = weights.find(prefix + name);
    return found == weights.end() ? at::Tensor() : found->second;
  };
  return {weights.at(prefix + "q_proj.weight"), weights.at(prefix + "k_proj.weight"), optional("q_proj.bias"),
          optional("k_proj.bias"), optional("q_norm.weight"), optional("k_norm.weight")};
}

at::Tensor project(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t heads,
                   int64_t head_dim) {
  const at::Tensor out = bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
  return out.view({x.size(0), x.size(1), heads, head_dim});
}

struct Locality {
  double far_mass = 0, entropy = 0;
  int64_t far_rows = 0, rows = 0;
};

// Adds one batch of one layer to `sums`.
void accumulate(const model::HybridModel& teacher, const model::Rope& rope, int64_t layer, const at::Tensor& x,
                int64_t window, Locality& sums) {
  const io::ModelConfig& config = teacher.config();
  const int64_t q_heads = config.num_attention_heads, kv_heads = config.num_key_value_heads;
  const int64_t head_dim = config.head_dim, steps = x.size(1);
  const LayerQk w = layer_qk(teacher, layer);
  at::Tensor q = project(x, w.q_weight, w.q_bias, q_heads, head_dim);
  at::Tensor k = project(x, w.k_weight, w.k_bias, kv_heads, head_dim);
  if (w.q_norm.defined()) {
    q = model::rms_norm(q, w.q_norm, config.rms_norm_eps);
    k = model::rms_norm(k, w.k_norm, config.rms_norm_eps);
  }
  std::tie(q, k) = rope.apply(q, k, 0);
  q = q.to(at::kFloat).transpose(1, 2);  // [B, H, T, D]
  k = k.to(at::kFloat).transpose(1, 2);
  const auto options = at::TensorOptions().device(x.device());
  const at::Tensor position = at::arange(steps, options.dtype(at::kLong));
  const at::Tensor distance = position.unsqueeze(1) - position.unsqueeze(0);  // query - key
  const at::Tensor causal = distance >= 0, beyond = distance >= window;
  const at::Tensor far_rows = position >= window;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  for (int64_t head = 0; head < q_heads; ++head) {
    const at::Tensor scores = at::matmul(q.select(1, head), k.select(1, head / (q_heads / kv_heads)).transpose(1, 2));
    const at::Tensor probs = at::softmax(scores.mul(scale).masked_fill(causal.logical_not(), -INFINITY), -1);
    const at::Tensor far = probs.masked_fill(beyond.logical_not(), 0).sum(-1);  // [B, T]
    sums.far_mass += far.index({at::indexing::Slice(), far_rows}).sum().item<double>();
    sums.far_rows += x.size(0) * far_rows.sum().item<int64_t>();
    const at::Tensor entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1);
    sums.entropy += entropy.sum().item<double>();
    sums.rows += entropy.numel();
  }
}

}  // namespace

ScorerResult score_attention_locality(const ScoringContext& context) {
  at::NoGradGuard no_grad;
  const io::ModelConfig& config = context.teacher->config();
  const model::Rope rope(config.rope, config.head_dim, config.max_position_embeddings);
  std::vector<Locality> sums(context.num_layers);
  for (size_t b = 0; b < context.inputs.size(); ++b) {
    const TracedPass pass = traced_teacher_pass(*context.teacher, context.inputs[b]);
    for (int64_t layer = 0; layer < context.num_layers; ++layer)
      accumulate(*context.teacher, rope, layer, pass.trace.traced.at(layer).mixer_input, context.settings.window,
                 sums[layer]);
    log_progress(context, "attention-locality batches", static_cast<int64_t>(b) + 1,
                 static_cast<int64_t>(context.inputs.size()));
  }
  ScorerResult result;
  result.cost_unit = "attention mass beyond W";
  std::vector<double> entropy;
  for (const Locality& sum : sums) {
    const double far = sum.far_mass / static_cast<double>(sum.far_rows);
    result.cost.push_back(far);
    result.scores.push_back(-far);
    entropy.push_back(sum.entropy / static_cast<double>(sum.rows));
  }
  result.columns.push_back({"entropy_nats", entropy});
  result.total_increase = all_windowed_increase(context);
  result.detail = "1 traced pass (attention recomputed per layer and head) + 1 all-windowed pass for calibration, W=" +
                  std::to_string(context.settings.window);
  return result;
}

}  // namespace prime::search
