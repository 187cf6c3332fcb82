#include "eval/perplexity.h"

#include <chrono>
#include <cmath>
#include <limits>

#include "util/error.h"

namespace prime::eval {
namespace {

using Fetch = std::function<at::Tensor(int64_t begin, int64_t length)>;

// Sum of -log p(target) over one window's scored tokens. log_softmax runs on slices of at most
// 512 positions so a 150k vocabulary never needs a [T, V] float32 copy of the whole window.
double window_nll(const at::Tensor& logits, const at::Tensor& ids, int64_t first_scored) {
  const int64_t length = ids.size(0);
  double total = 0;
  for (int64_t target = first_scored; target < length; target += 512) {
    const int64_t count = std::min<int64_t>(512, length - target);
    at::Tensor log_probs = logits.narrow(0, target - 1, count).to(at::kFloat).log_softmax(-1);
    at::Tensor targets = ids.narrow(0, target, count).to(logits.device()).unsqueeze(-1);
    total -= log_probs.gather(-1, targets).to(at::kDouble).sum().item<double>();
  }
  return total;
}

PerplexityResult run(const LogitsFn& logits_fn, int64_t n, const Fetch& fetch, double bytes,
                     const PerplexityOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t stride = options.stride > 0 ? options.stride : std::max<int64_t>(1, options.ctx / 2);
  if (options.batch < 1) throw user_error("--batch must be >= 1");
  const auto windows = plan_windows(n, options.ctx, stride);
  PerplexityResult result;
  result.tokens_used = n;
  result.ctx = options.ctx;
  result.stride = stride;
  result.windows = static_cast<int64_t>(windows.size());
  if (options.progress) options.progress(0, n - 1);  // a rate's clock starts here, not after the first batch
  for (size_t first = 0; first < windows.size();) {
    // A batch: consecutive windows of the same length (all but the last window are ctx long).
    const int64_t length = windows[first].end - windows[first].begin;
    size_t last = first;
    while (last < windows.size() && static_cast<int64_t>(last - first) < options.batch &&
           windows[last].end - windows[last].begin == length)
      ++last;
    std::vector<at::Tensor> rows;
    for (size_t w = first; w < last; ++w) rows.push_back(fetch(windows[w].begin, length));
    const at::Tensor ids = at::stack(rows);
    const at::Tensor logits = logits_fn(ids);
    if (logits.dim() != 3 || logits.size(0) != ids.size(0) || logits.size(1) != length)
      throw internal_error("logits have shape ", logits.sizes(), " for ids ", ids.sizes());
    for (size_t w = first; w < last; ++w) {
      const auto& window = windows[w];
      const int64_t row = static_cast<int64_t>(w - first);
      result.nll_sum += window_nll(logits[row], ids[row], window.score_from - window.begin);
      result.tokens_scored += window.end - window.score_from;
    }
    if (options.progress) options.progress(result.tokens_scored, n - 1);
    first = last;
  }
  result.nll_mean = result.nll_sum / static_cast<double>(result.tokens_scored);
  result.ppl = std::exp(result.nll_mean);
  result.bytes = bytes;
  result.bits_per_byte =
      bytes > 0 ? result.nll_sum / std::log(2.0) / bytes : std::numeric_limits<double>::quiet_NaN();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace

std::vector<Window> plan_windows(int64_t n, int64_t ctx, int64_t stride) {
  if (ctx < 2) throw user_error("--ctx must be >= 2, got ", ctx);
  // Windows overlap by at least one token, so every scored token has context inside its window.
  if (stride < 1 || stride >= ctx) throw user_error("--stride must be in [1, ctx - 1 = ", ctx - 1, "], got ", stride);
  if (n < 2) throw user_error("perplexity needs at least 2 tokens, got ", n);
  std::vector<Window> windows;
  int64_t scored_until = 1;  // token 0 has no context and is never scored
  for (int64_t begin = 0; scored_until < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n);
    windows.push_back({begin, end, scored_until});
    scored_until = end;
  }
  return windows;
}

PerplexityResult perplexity(const LogitsFn& logits, const at::Tensor& ids, double source_bytes,
                            const PerplexityOptions& options) {
  if (ids.dim() != 1) throw internal_error("perplexity ids must be 1-D, got ", ids.sizes());
  at::Tensor all = ids.to(at::kLong).cpu();
  int64_t n = all.size(0);
  if (options.max_tokens > 0 && options.max_tokens < n) {
    source_bytes = source_bytes * options.max_tokens / n;
    n = options.max_tokens;
  }
  return run(logits, n, [&](int64_t begin, int64_t length) { return all.narrow(0, begin, length); }, source_bytes,
             options);
}

PerplexityResult perplexity(const LogitsFn& logits, const io::TokenShard& shard, const PerplexityOptions& options,
                            int64_t model_vocab) {
  const auto& header = shard.header();
  if (header.kind != io::ShardKind::kTokens)
    throw user_error(shard.path().string(), " holds position ids, not tokens");
  const int64_t n = options.max_tokens > 0 ? std::min(options.max_tokens, shard.size()) : shard.size();
  if (model_vocab > 0 && header.vocab_size > model_vocab) {
    // The tokenizer may still only have produced ids the model knows; check before any forward.
    uint32_t highest = 0;
    std::vector<uint32_t> chunk(1 << 16);
    for (int64_t offset = 0; offset < n; offset += static_cast<int64_t>(chunk.size())) {
      const int64_t length = std::min<int64_t>(chunk.size(), n - offset);
      shard.read(offset, length, chunk.data());
      for (int64_t i = 0; i < length; ++i) highest = std::max(highest, chunk[i]);
    }
    if (static_cast<int64_t>(highest) >= model_vocab)
      throw user_error(shard.path().string(), " has id ", highest, " but the model's vocabulary is ", model_vocab,
                       " (tokenizer vocab ", header.vocab_size, "): use a model whose vocab covers the tokenizer");
  }
  const double bytes = shard.size() > 0 ? double(header.source_bytes) * n / shard.size() : 0;
  return run(logits, n, [&](int64_t begin, int64_t length) { return shard.slice(begin, length); }, bytes, options);
}

nlohmann::json to_json(const PerplexityResult& result) {
  nlohmann::json out = {{"tokens_used", result.tokens_used}, {"tokens_scored", result.tokens_scored},
                        {"windows", result.windows},         {"ctx", result.ctx},
                        {"stride", result.stride},           {"nll", result.nll_mean},
                        {"nll_sum", result.nll_sum},         {"ppl", result.ppl},
                        {"bytes", result.bytes},             {"seconds", result.seconds}};
  out["bits_per_byte"] = std::isnan(result.bits_per_byte) ? nlohmann::json() : nlohmann::json(result.bits_per_byte);
  return out;
}

}  // namespace prime::eval
