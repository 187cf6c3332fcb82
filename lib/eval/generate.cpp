#include "eval/generate.h"

#include <algorithm>

#include <ATen/core/grad_mode.h>

#include "util/error.h"

namespace prime::eval {

std::vector<std::vector<int64_t>> greedy_generate(model::HybridModel& model, const at::Tensor& prompt,
                                                  const GenerateOptions& options) {
  if (prompt.dim() != 2 || prompt.size(1) == 0) throw user_error("the prompt must hold at least one token");
  at::NoGradGuard no_grad;
  const int64_t batch = prompt.size(0);
  model::ModelCache cache = model.make_cache(batch);
  std::vector<std::vector<int64_t>> generated(batch);
  std::vector<bool> done(batch, false);
  at::Tensor logits = model.forward(prompt, &cache);
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    at::Tensor next = logits.select(1, logits.size(1) - 1).argmax(-1).cpu();  // [B]
    bool all_done = true;
    for (int64_t b = 0; b < batch; ++b) {
      if (done[b]) continue;
      const int64_t token = next[b].item<int64_t>();
      generated[b].push_back(token);
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end()) done[b] = true;
      all_done = all_done && done[b];
    }
    if (all_done || step + 1 == options.max_new_tokens) break;
    logits = model.forward(next.unsqueeze(1), &cache);
  }
  return generated;
}

}  // namespace prime::eval
