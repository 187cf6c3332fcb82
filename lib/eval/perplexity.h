// Perplexity of a model on a token shard with strided windows (the Hugging Face recipe): windows
// of `ctx` tokens start every `stride` tokens; each window scores only the tokens the previous
// window did not, so every token after the first is scored exactly once, with between
// ctx - stride and ctx - 1 tokens of context (the first window: 1 .. ctx - 1). stride < ctx:
// consecutive windows overlap, so no scored token starts its window without context.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/logits_fn.h"
#include "data/token_shard.h"

namespace prime::eval {

struct PerplexityOptions {
  int64_t ctx = 1024;
  int64_t stride = 0;      // 0: ctx / 2
  int64_t batch = 1;       // windows per forward
  int64_t max_tokens = 0;  // 0: the whole shard; else its first max_tokens tokens
  // Called with 0 before the first forward, then with the tokens scored after each batch.
  std::function<void(int64_t scored, int64_t total)> progress;
};

struct PerplexityResult {
  int64_t tokens_used = 0;    // tokens of the shard the windows covered
  int64_t tokens_scored = 0;  // tokens_used - 1
  int64_t windows = 0;
  int64_t ctx = 0, stride = 0;
  double nll_sum = 0;         // nats
  double nll_mean = 0;        // nats per scored token
  double ppl = 0;             // exp(nll_mean)
  double bytes = 0;           // source bytes attributed to tokens_used (0: unknown)
  double bits_per_byte = 0;   // nll_sum / ln 2 / bytes; NaN when bytes are unknown
  double seconds = 0;
};

struct Window {
  int64_t begin, end, score_from;  // forward ids[begin, end); score tokens [score_from, end)
};
// The windows for n tokens (UserError unless 0 < stride < ctx and n >= 2).
std::vector<Window> plan_windows(int64_t n, int64_t ctx, int64_t stride);

// ids [N] int64 on the CPU; source_bytes of those N tokens (0: unknown).
PerplexityResult perplexity(const LogitsFn& logits, const at::Tensor& ids, double source_bytes,
                            const PerplexityOptions& options);
// On a token shard: bytes from its header, pro rata when only max_tokens are used. UserError
// when the shard holds positions or ids at or beyond `model_vocab` (when > 0).
PerplexityResult perplexity(const LogitsFn& logits, const io::TokenShard& shard, const PerplexityOptions& options,
                            int64_t model_vocab = 0);

nlohmann::json to_json(const PerplexityResult& result);

}  // namespace prime::eval
