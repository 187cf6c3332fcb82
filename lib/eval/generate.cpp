#include "eval/generate.h"

#include <algorithm>
#include <memory>

#include <ATen/core/grad_mode.h>

#include "model/step_decoder.h"
#include "util/error.h"

namespace prime::eval {

std::vector<std::vector<int64_t>> greedy_generate(model::HybridModel& model, const at::Tensor& prompt,
                                                  const GenerateOptions& options) {
  if (prompt.dim() != 2 || prompt.size(1) == 0) throw user_error("the prompt must hold at least one token");
  at::NoGradGuard no_grad;
  const int64_t batch = prompt.size(0);
  const int64_t max_tokens = prompt.size(1) + options.max_new_tokens;  // the last new token is not fed back
  model::ModelCache cache = model.make_cache(batch, max_tokens);
  std::unique_ptr<model::StepDecoder> decoder;
  std::vector<std::vector<int64_t>> generated(batch);
  std::vector<bool> done(batch, false);
  at::Tensor logits = model.forward(prompt, &cache).select(1, prompt.size(1) - 1);  // [B, vocab]
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const at::Tensor next = logits.argmax(-1).cpu();  // [B]
    bool all_done = true;
    for (int64_t b = 0; b < batch; ++b) {
      if (done[b]) continue;
      const int64_t token = next[b].item<int64_t>();
      generated[b].push_back(token);
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end()) done[b] = true;
      all_done = all_done && done[b];
    }
    if (options.progress) options.progress(step + 1);
    if (all_done || step + 1 == options.max_new_tokens) break;
    if (!decoder) decoder = std::make_unique<model::StepDecoder>(model, cache, max_tokens, options.graph);
    logits = decoder->step(next);
  }
  return generated;
}

}  // namespace prime::eval
