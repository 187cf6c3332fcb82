#include "eval/eval_run.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include "convert/in_memory.h"
#include "convert/model_spec.h"
#include "data/progress.h"
#include "data/token_shard.h"
#include "eval/generate.h"
#include "eval/json_output.h"
#include "io/tensor_file.h"
#include "util/cli.h"
#include "util/error.h"

namespace prime::eval {
namespace {

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw user_error("--token-ids: '", item, "' is not an integer");
    }
  }
  if (ids.empty()) throw user_error("--token-ids is empty");
  return ids;
}

// MemAvailable from /proc/meminfo in bytes; 0 when unknown.
uint64_t available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

std::string gigabytes(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GB", bytes / 1e9);
  return text;
}

// Prints "done/total" progress on `out` (nothing when null), created on the first report. Short
// runs (recall cells, generation) show it on a terminal only; perplexity also as log lines.
class Progress {
 public:
  Progress(std::ostream* out, bool tty, std::string label, std::string unit)
      : out_(out), tty_(tty), label_(std::move(label)), unit_(std::move(unit)) {}
  void update(uint64_t done, uint64_t total) {
    if (!out_) return;
    if (!meter_) meter_ = std::make_unique<data::ProgressMeter>(label_, total, *out_, tty_, unit_, 1);
    meter_->update(done);
  }
  void finish() {
    if (meter_) meter_->finish();
  }

 private:
  std::ostream* out_;
  bool tty_;
  std::string label_, unit_;
  std::unique_ptr<data::ProgressMeter> meter_;
};

}  // namespace

at::ScalarType default_eval_dtype(const io::Source& source) { return io::summarize_weights(source).dtype; }

void check_weights_fit(const io::Source& source, at::ScalarType dtype, const at::Device& device) {
  const io::WeightsSummary summary = io::summarize_weights(source);
  // Weights used as stored stay mmap'd views of the files (page cache, not process memory); any
  // other dtype, and synthetic weights, are made in RAM. (GPU memory is not estimated here.)
  const bool copied = source.kind == "synthetic" || dtype != summary.dtype;
  if (!device.is_cpu() || !copied) return;
  const uint64_t needed = summary.parameters * at::elementSize(dtype);
  const uint64_t available = available_memory();
  if (available == 0 || needed <= available * 0.9) return;
  throw user_error(source.spec, " needs about ", gigabytes(needed), " of memory for its ", summary.parameters,
                   " parameters as ", dtype_flag_name(dtype), ", but only ", gigabytes(available),
                   " is available", dtype == summary.dtype ? "" : "; try --dtype " + dtype_flag_name(summary.dtype) +
                   " (the checkpoint's dtype)");
}

void check_logits_fit(int64_t vocab, int64_t window_tokens, int64_t batch, const at::Device& device) {
  if (!device.is_cpu() || vocab <= 0 || window_tokens <= 0 || batch <= 0) return;
  // A batch's fp32 logits [batch, window, vocab], and their log-softmax beside them.
  const double needed = 2.0 * static_cast<double>(batch) * window_tokens * vocab * 4;
  const uint64_t available = available_memory();
  if (available == 0 || needed <= available * 0.9) return;
  throw user_error("perplexity windows of ", window_tokens, " tokens", batch > 1 ? " in batches of " : "",
                   batch > 1 ? std::to_string(batch) : "", " need about ", gigabytes(static_cast<uint64_t>(needed)),
                   " for their logits over ", vocab, " ids, but only ", gigabytes(available),
                   " is available: lower --ctx", batch > 1 ? " or --batch" : "");
}

void check_generate_fits(const io::ModelConfig& config, int64_t tokens, at::ScalarType dtype, const at::Device& device) {
  if (!device.is_cpu() || tokens <= 0) return;
  const int64_t head_dim = config.head_dim > 0 ? config.head_dim
                                               : config.hidden_size / std::max<int64_t>(config.num_attention_heads, 1);
  int64_t attention_layers = config.num_hidden_layers;  // "*" and "SWA" layers hold keys and values
  if (!config.layer_pattern.empty())
    attention_layers = std::count_if(config.layer_pattern.begin(), config.layer_pattern.end(),
                                     [](const std::string& symbol) { return symbol == "*" || symbol == "SWA"; });
  const double needed = 2.0 * static_cast<double>(attention_layers) * config.num_key_value_heads * head_dim *
                        static_cast<double>(at::elementSize(dtype)) * static_cast<double>(tokens);
  const uint64_t available = available_memory();
  if (available == 0 || needed <= available * 0.9) return;
  throw user_error("the prompt and --generate's tokens (", tokens, " positions) need a key/value cache of about ",
                   gigabytes(static_cast<uint64_t>(std::min(needed, 1.8e19))), ", but only ", gigabytes(available),
                   " is available: lower --generate");
}

nlohmann::json EvalResult::to_json() const {
  nlohmann::json json = {{"model", model}, {"device", device}, {"dtype", dtype}};
  if (ppl) {
    json["ppl"] = eval::to_json(*ppl);
    json["ppl"]["shard"] = ppl_shard;
  }
  if (needle) json["needle"] = eval::to_json(*needle);
  if (mqar) json["mqar"] = eval::to_json(*mqar);
  if (needle || mqar) json["haystack"] = haystack;
  if (!prompt.empty()) json["prompt"] = prompt;
  if (!generated.empty()) json["generated"] = generated;
  if (next_token) json["next_token"] = *next_token;
  return json;
}

EvalResult run_eval(const EvalRequest& request, std::ostream& out, std::ostream* progress, bool tty) {
  if (request.generate < 0) throw user_error("--generate must be >= 0");
  if (request.batch < 1 || request.trials < 1) throw user_error("--batch and --trials must be >= 1");
  const bool want_needle = request.probes.find("needle") != std::string::npos;
  const bool want_mqar = request.probes.find("mqar") != std::string::npos;
  if (request.recall && !want_needle && !want_mqar)
    throw user_error("--probes '", request.probes, "' names no probe (needle, mqar)");
  const bool token_run = (request.ppl_shard.empty() && !request.recall) || !request.dump_logits.empty() ||
                         request.generate > 0;
  const std::vector<int64_t> ids = token_run ? parse_ids(request.token_ids) : std::vector<int64_t>{};
  check_output_file(request.dump_logits, "--dump-logits", request.force);
  check_output_file(request.json_path, "--json", request.force);
  // Shards are opened before the model is built, so a bad shard fails fast.
  std::optional<io::TokenShard> ppl_data, haystack_data;
  if (!request.ppl_shard.empty()) ppl_data = io::TokenShard::open(request.ppl_shard);
  if (request.recall && !request.haystack.empty()) haystack_data = io::TokenShard::open(request.haystack);
  else if (request.recall && ppl_data) haystack_data = ppl_data;

  // The source behind the spec decides the default dtype and whether the weights fit.
  const auto convert_request = convert::parse_convert_spec(request.model);
  const io::Source source = io::resolve_source(convert_request ? convert_request->source : request.model);
  const at::Device device = parse_device(request.device);
  const at::ScalarType dtype = request.dtype.empty() ? default_eval_dtype(source) : parse_dtype_flag(request.dtype);
  check_weights_fit(source, dtype, device);
  if (ppl_data) check_logits_fit(source.config.vocab_size, std::min(request.ppl.ctx, ppl_data->size()), request.batch,
                                 device);
  if (request.generate > 0) {
    const int64_t prompt = static_cast<int64_t>(ids.size());
    const int64_t positions = request.generate > INT64_MAX / 2 - prompt ? INT64_MAX / 2 : prompt + request.generate;
    check_generate_fits(source.config, positions, dtype, device);
  }
  const model::LoadOptions options{device, dtype};
  auto loaded = convert::load_model_spec(request.model, options);

  EvalResult result;
  result.model = request.model;
  result.device = device.str();
  result.dtype = dtype_flag_name(dtype);
  const auto logits_fn = model_logits(*loaded.model);
  const int64_t vocab = loaded.model->config().vocab_size;
  if (ppl_data) {
    PerplexityOptions ppl = request.ppl;
    ppl.batch = request.batch;
    Progress meter(progress, tty, "ppl", "tokens");
    ppl.progress = [&](int64_t scored, int64_t total) { meter.update(scored, total); };
    result.ppl = perplexity(logits_fn, *ppl_data, ppl, vocab);
    meter.finish();
    result.ppl_shard = request.ppl_shard;
    const auto& r = *result.ppl;
    char line[512];
    std::snprintf(line, sizeof line, "perplexity on %s: ctx %lld, stride %lld, %lld windows, %lld tokens scored\n",
                  request.ppl_shard.c_str(), static_cast<long long>(r.ctx), static_cast<long long>(r.stride),
                  static_cast<long long>(r.windows), static_cast<long long>(r.tokens_scored));
    out << line;
    std::snprintf(line, sizeof line, "  NLL %.4f nats/token   PPL %.3f   bits/byte %s\n", r.nll_mean, r.ppl,
                  std::isnan(r.bits_per_byte) ? "n/a (shard has no byte count)"
                                              : std::to_string(r.bits_per_byte).c_str());
    out << line;
  }
  if (request.recall) {
    const ProbeVocabulary vocabulary(haystack_data ? &*haystack_data : nullptr, vocab, request.seed);
    if (want_needle) {
      NeedleOptions needle = request.needle;
      needle.trials = request.trials, needle.seed = request.seed, needle.batch = request.batch;
      Progress meter(tty ? progress : nullptr, tty, "needle", "cells");
      needle.progress = [&](size_t done, size_t total) { meter.update(done, total); };
      result.needle = run_needle(logits_fn, vocabulary, needle);
      meter.finish();
      print_needle_table(*result.needle, out);
    }
    if (want_mqar) {
      MqarOptions mqar = request.mqar;
      mqar.trials = request.trials, mqar.seed = request.seed, mqar.batch = request.batch;
      Progress meter(tty ? progress : nullptr, tty, "mqar", "cells");
      mqar.progress = [&](size_t done, size_t total) { meter.update(done, total); };
      result.mqar = run_mqar(logits_fn, vocabulary, mqar);
      meter.finish();
      print_mqar_table(*result.mqar, out);
    }
    result.haystack = haystack_data ? haystack_data->path().string() : "random ids";
  }
  // The JSON file once everything it holds is known (the generated ids too).
  const auto write_json = [&] {
    if (request.json_path.empty()) return;
    write_json_file(request.json_path, result.to_json(), request.force, "--json");
    out << "wrote " << request.json_path << "\n";
  };
  if (!token_run) {
    write_json();
    return result;
  }

  result.prompt = ids;
  at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
  at::NoGradGuard no_grad;
  if (!request.dump_logits.empty()) {
    result.logits = loaded.model->forward(input).squeeze(0).to(at::kFloat).cpu().contiguous();
    io::save_tensor_file(request.dump_logits, {{"logits", result.logits}}, {{"model", request.model}}, request.force,
                         "--dump-logits");
    out << "wrote logits [" << result.logits.size(0) << ", " << result.logits.size(1) << "] to "
        << request.dump_logits << "\n";
  }
  if (request.generate > 0) {
    const int64_t max_positions = loaded.model->config().max_position_embeddings;
    const int64_t length = static_cast<int64_t>(ids.size()) + request.generate;
    if (progress && max_positions > 0 && length > max_positions)
      *progress << "warning: the prompt (" << ids.size() << " tokens) and --generate " << request.generate
                << " reach position " << length << ", past max_position_embeddings " << max_positions
                << " of the model; output there is outside what it was trained for\n";
    GenerateOptions generate;
    generate.max_new_tokens = request.generate;
    Progress meter(tty ? progress : nullptr, tty, "generate", "tokens");
    generate.progress = [&](int64_t done) { meter.update(done, request.generate); };
    result.generated = greedy_generate(*loaded.model, input, generate).front();
    meter.finish();
    out << "generated:";
    for (int64_t token : result.generated) out << " " << token;
    out << "\n";
  }
  if (request.dump_logits.empty() && request.generate == 0) {
    at::Tensor logits = loaded.model->forward(input).to(at::kFloat);
    result.next_token = logits.select(1, logits.size(1) - 1).argmax(-1).item<int64_t>();
    out << "next token: " << *result.next_token << "\n";
  }
  write_json();
  return result;
}

}  // namespace prime::eval
