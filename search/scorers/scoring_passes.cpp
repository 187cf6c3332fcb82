#include "search/scorers/scoring_passes.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace prime::search {

at::Tensor token_nll(const at::Tensor& logits, const at::Tensor& targets) {
  const at::Tensor log_probs = at::log_softmax(logits.to(at::kFloat), -1);
  return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1);
}

at::Tensor token_kl(const at::Tensor& p_logits, const at::Tensor& q_logits) {
  const at::Tensor log_p = at::log_softmax(p_logits.to(at::kFloat), -1);
  const at::Tensor log_q = at::log_softmax(q_logits.to(at::kFloat), -1);
  return (log_p.exp() * (log_p - log_q)).sum(-1);
}

TracedPass traced_teacher_pass(model::HybridModel& teacher, const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  TracedPass pass;
  pass.trace.layers.resize(teacher.num_layers());
  std::iota(pass.trace.layers.begin(), pass.trace.layers.end(), 0);
  model::ForwardOptions options;
  options.trace = &pass.trace;
  pass.logits = teacher.forward(ids, nullptr, options);
  return pass;
}

at::Tensor logits_from_layer(model::HybridModel& model, int64_t first, at::Tensor hidden) {
  at::NoGradGuard no_grad;
  for (int64_t layer = first; layer < model.num_layers(); ++layer) hidden = model.forward_layer(layer, hidden);
  return at::linear(model.final_norm(hidden), model.lm_head());
}

std::unique_ptr<model::HybridModel> windowed_model(const model::HybridModel& teacher,
                                                   const std::vector<int64_t>& layers, int64_t window) {
  io::ModelConfig config = teacher.config();
  for (int64_t layer : layers) config.attention_window.at(layer) = window;
  return std::make_unique<model::HybridModel>(config, teacher.weights());
}

double mean_nll(model::HybridModel& model, const ScoringContext& context) {
  at::NoGradGuard no_grad;
  double sum = 0;
  int64_t count = 0;
  for (size_t b = 0; b < context.inputs.size(); ++b) {
    const at::Tensor nll = token_nll(model.forward(context.inputs[b]), context.targets[b]);
    sum += nll.sum().item<double>();
    count += nll.numel();
  }
  return sum / static_cast<double>(count);
}

double all_windowed_increase(const ScoringContext& context) {
  std::vector<int64_t> every(context.num_layers);
  std::iota(every.begin(), every.end(), 0);
  auto windowed = windowed_model(*context.teacher, every, context.settings.window);
  return mean_nll(*windowed, context) - mean_nll(*context.teacher, context);
}

void log_progress(const ScoringContext& context, const std::string& label, int64_t done, int64_t total) {
  if (context.log) *context.log << label << ": " << done << "/" << total << std::endl;
}

std::vector<double> standardized(const std::vector<double>& values, double min_spread) {
  const double n = static_cast<double>(values.size());
  double mean = 0, squares = 0;
  for (double v : values) mean += v / n;
  for (double v : values) squares += (v - mean) * (v - mean) / n;
  const double spread = std::max(std::sqrt(squares), min_spread);
  std::vector<double> z;
  for (double v : values) z.push_back(spread > 0 ? (v - mean) / spread : 0.0);
  return z;
}

at::Tensor beyond_window_mask(int64_t steps, int64_t window, const at::Device& device) {
  return (at::arange(steps, at::TensorOptions().dtype(at::kLong).device(device)) >= window).unsqueeze(0);
}

}  // namespace prime::search
