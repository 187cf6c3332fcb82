// prime-eval as one library call, so a sweep trial runs exactly what the command runs: load a
// model spec, then perplexity on a shard, recall probes, dumped logits, greedy generation or the
// next token, with the results as JSON.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/mqar.h"
#include "eval/needle.h"
#include "eval/perplexity.h"
#include "io/source.h"

namespace prime::eval {

struct EvalRequest {
  std::string model;                  // directory, alias, HF id, synthetic:..., SOURCE+convert:...
  std::string device = "auto";        // cpu, cuda, cuda:N, auto
  std::string dtype;                  // fp32, bf16, fp16; empty: the checkpoint's own dtype
  std::string token_ids = "1,2,3,4";  // comma-separated prompt
  std::string dump_logits;            // write float32 logits [T, vocab] here (.safetensors)
  int64_t generate = 0;               // greedy-decode this many tokens after the prompt
  std::string ppl_shard;              // token shard for perplexity
  PerplexityOptions ppl;
  bool recall = false;
  std::string probes = "needle,mqar";
  std::string haystack;  // token shard for filler and probe ids (default: ppl_shard, else random ids)
  NeedleOptions needle;
  MqarOptions mqar;
  int64_t batch = 4, trials = 10;
  uint64_t seed = 0;
  std::string json_path;  // also write the ppl / recall results here
  bool force = false;     // replace existing dump_logits / json_path files
};

struct EvalResult {
  std::string model, device, dtype;
  std::optional<PerplexityResult> ppl;
  std::string ppl_shard;
  std::optional<NeedleResult> needle;
  std::optional<MqarResult> mqar;
  std::string haystack;               // shard path or "random ids" (recall only)
  at::Tensor logits;                  // [T, vocab] float32, when dump_logits was asked for
  std::vector<int64_t> prompt;        // the token ids run (logits, generation, next token)
  std::vector<int64_t> generated;     // when generate > 0
  std::optional<int64_t> next_token;  // when neither logits nor generation was asked for
  // {"model", "device", "dtype", "ppl": {..., "shard"}, "needle", "mqar", "haystack"}.
  nlohmann::json to_json() const;
};

// Validates the request (UserError naming the flag), checks the outputs may be written and the
// weights fit in memory before loading, runs, prints the human-readable report to `out` and
// progress / warnings to `progress` (null: none; tty: redraw in place).
EvalResult run_eval(const EvalRequest& request, std::ostream& out, std::ostream* progress = nullptr,
                    bool tty = false);

// The dtype a model is evaluated in when none is asked for: the checkpoint's (synthetic sources:
// their config's torch_dtype, see io::synthetic_dtype).
at::ScalarType default_eval_dtype(const io::Source& source);

// UserError, before anything is loaded, when the weights of `source` as `dtype` cannot fit in the
// memory this machine has available (CPU RAM; mmap'd weights used as stored count as page cache).
void check_weights_fit(const io::Source& source, at::ScalarType dtype, const at::Device& device);

// UserError when perplexity windows of `window_tokens` in batches of `batch` need more memory for
// their logits (fp32 [batch, window, vocab] and their log-softmax) than 90% of what is available,
// on the CPU; nothing elsewhere.
void check_logits_fit(int64_t vocab, int64_t window_tokens, int64_t batch, const at::Device& device);

// UserError when `tokens` positions (the prompt and --generate's new tokens) need a key/value cache
// larger than 90% of the memory available, on the CPU (the attention and SWA layers' keys and
// values; SWA counted in full); nothing elsewhere.
void check_generate_fits(const io::ModelConfig& config, int64_t tokens, at::ScalarType dtype, const at::Device& device);

}  // namespace prime::eval
