// swa-sensitivity (the reference method, with our own measurement): each layer alone switched to
// a sliding window of W tokens; its cost is the increase in NLL on the tokens whose context is
// longer than W (the only ones a window changes). L extra passes, each from the switched layer
// on: the layers before it are the teacher's, so their outputs are taken from one traced pass.
#include <ATen/core/grad_mode.h>

#include "search/scorers/scorer.h"
#include "search/scorers/scoring_passes.h"

namespace prime::search {

ScorerResult score_swa_sensitivity(const ScoringContext& context) {
  at::NoGradGuard no_grad;
  const int64_t layers = context.num_layers, window = context.settings.window;
  std::vector<std::unique_ptr<model::HybridModel>> switched;
  for (int64_t layer = 0; layer < layers; ++layer)
    switched.push_back(windowed_model(*context.teacher, {layer}, window));
  std::vector<double> nll_increase(layers, 0.0), kl(layers, 0.0);
  int64_t scored = 0;
  for (size_t b = 0; b < context.inputs.size(); ++b) {
    TracedPass pass = traced_teacher_pass(*context.teacher, context.inputs[b]);
    const at::Tensor far = beyond_window_mask(context.inputs[b].size(1), window, context.device)
                               .expand_as(context.targets[b]);
    const at::Tensor base = token_nll(pass.logits, context.targets[b]);
    scored += far.sum().item<int64_t>();
    for (int64_t layer = 0; layer < layers; ++layer) {
      const at::Tensor logits = logits_from_layer(*switched[layer], layer, pass.trace.traced.at(layer).layer_input);
      nll_increase[layer] += (token_nll(logits, context.targets[b]) - base).masked_select(far).sum().item<double>();
      kl[layer] += token_kl(pass.logits, logits).masked_select(far).sum().item<double>();
    }
    log_progress(context, "swa-sensitivity batches", static_cast<int64_t>(b) + 1,
                 static_cast<int64_t>(context.inputs.size()));
  }
  ScorerResult result;
  result.cost_unit = "NLL increase beyond W (nats/token)";
  for (int64_t layer = 0; layer < layers; ++layer) {
    nll_increase[layer] /= static_cast<double>(scored);
    kl[layer] /= static_cast<double>(scored);
    result.cost.push_back(nll_increase[layer]);
    result.scores.push_back(-nll_increase[layer]);
  }
  result.columns.push_back({"kl_beyond_w", kl});
  result.total_increase = all_windowed_increase(context);
  result.detail = std::to_string(layers) + " single-layer windowed passes + 1 all-windowed, W=" +
                  std::to_string(window) + ", " + std::to_string(scored) + " tokens beyond W";
  return result;
}

}  // namespace prime::search
