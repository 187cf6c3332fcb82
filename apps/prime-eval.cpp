// prime-eval: run a model (Transformer or hybrid) on token ids: dump logits, greedy-generate;
// perplexity on a token shard (--ppl); long-context recall probes (--recall: needle, MQAR).
#include <CLI/CLI.hpp>

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>

#include "data/progress.h"
#include "eval/generate.h"
#include "eval/json_output.h"
#include "eval/mqar.h"
#include "eval/needle.h"
#include "eval/perplexity.h"
#include "data/token_shard.h"
#include "io/tensor_file.h"
#include "model/load_model.h"
#include "util/cli.h"
#include "util/error.h"

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
      throw prime::user_error("--token-ids: '", item, "' is not an integer");
    }
  }
  if (ids.empty()) throw prime::user_error("--token-ids is empty");
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"prime-eval: evaluate a Transformer or hybrid checkpoint"};
  std::string model_spec, token_ids = "1,2,3,4", dump_logits, device_name = "auto", dtype_name = "fp32";
  int64_t generate = 0;
  app.add_option("--model", model_spec, "checkpoint dir, known alias, or synthetic:ALIAS[@k=v,...]")
      ->required()->group("Model");
  app.add_option("--device", device_name, "cpu, cuda, cuda:N or auto")->group("Model");
  app.add_option("--dtype", dtype_name, "weights dtype: fp32, bf16, fp16")->group("Model");
  app.add_option("--token-ids", token_ids, "comma-separated input token ids")->group("Input");
  app.add_option("--dump-logits", dump_logits, "write float32 logits [T, vocab] as tensor 'logits' to this .safetensors")
      ->group("Output");
  app.add_option("--generate", generate, "greedy-decode N tokens after the input and print their ids")
      ->group("Output");
  std::string ppl_shard, haystack, json_path, probes = "needle,mqar";
  bool recall = false;
  prime::eval::PerplexityOptions ppl;
  prime::eval::NeedleOptions needle;
  prime::eval::MqarOptions mqar;
  int64_t batch = 4, trials = 10;
  uint64_t seed = 0;
  app.add_option("--ppl", ppl_shard, "token shard: perplexity, NLL and bits per byte over strided windows")
      ->group("Perplexity");
  app.add_option("--ctx", ppl.ctx, "window length (default 1024)")->group("Perplexity");
  app.add_option("--stride", ppl.stride, "window step; each window scores its last `stride` tokens (default ctx/2)")
      ->group("Perplexity");
  app.add_option("--max-tokens", ppl.max_tokens, "use only the shard's first N tokens (default all)")->group("Perplexity");
  app.add_flag("--recall", recall, "run the recall probes (needle in a haystack, MQAR)")->group("Recall");
  app.add_option("--probes", probes, "which probes: needle,mqar (default both)")->group("Recall");
  app.add_option("--haystack", haystack, "token shard for filler and probe ids (default: --ppl's shard, else random ids)")
      ->group("Recall");
  app.add_option("--needle-lengths", needle.lengths, "context lengths (default 256,1024)")->delimiter(',')->group("Recall");
  app.add_option("--needle-depths", needle.depths, "needle depths in [0,1] (default 0,0.25,0.5,0.75,1)")
      ->delimiter(',')->group("Recall");
  app.add_option("--key-tokens", needle.key_tokens, "needle key length (default 4)")->group("Recall");
  app.add_option("--value-tokens", needle.value_tokens, "needle value length (default 4)")->group("Recall");
  app.add_option("--mqar-pairs", mqar.pairs, "key/value pairs (default 4,16,64)")->delimiter(',')->group("Recall");
  app.add_option("--mqar-lengths", mqar.lengths, "sequence lengths (default 256,1024)")->delimiter(',')->group("Recall");
  app.add_option("--trials", trials, "sequences per probe cell (default 10)")->group("Recall");
  app.add_option("--seed", seed, "probe seed (default 0)")->group("Recall");
  app.add_option("--batch", batch, "sequences per forward for --ppl and --recall (default 4)")->group("Model");
  app.add_option("--json", json_path, "also write the --ppl / --recall results to this JSON file")->group("Output");
  CLI11_PARSE(app, argc, argv);

  return prime::run_command("prime-eval", [&] {
    if (generate < 0) throw prime::user_error("--generate must be >= 0");
    if (batch < 1 || trials < 1) throw prime::user_error("--batch and --trials must be >= 1");
    const bool want_needle = probes.find("needle") != std::string::npos;
    const bool want_mqar = probes.find("mqar") != std::string::npos;
    if (recall && !want_needle && !want_mqar) throw prime::user_error("--probes '", probes, "' names no probe (needle, mqar)");
    // Shards are opened before the model is built, so a bad shard fails fast.
    std::optional<prime::io::TokenShard> ppl_data, haystack_data;
    if (!ppl_shard.empty()) ppl_data = prime::io::TokenShard::open(ppl_shard);
    if (recall && !haystack.empty()) haystack_data = prime::io::TokenShard::open(haystack);
    else if (recall && ppl_data) haystack_data = ppl_data;
    prime::model::LoadOptions options{prime::parse_device(device_name), prime::parse_dtype_flag(dtype_name)};
    auto loaded = prime::model::load_model(model_spec, options);
    nlohmann::json results = {{"model", model_spec}, {"device", options.device.str()}, {"dtype", dtype_name}};
    const auto logits_fn = prime::eval::model_logits(*loaded.model);
    const int64_t vocab = loaded.model->config().vocab_size;
    if (ppl_data) {
      ppl.batch = batch;
      prime::data::ProgressMeter meter("ppl", 0, std::cerr, prime::data::ProgressMeter::stderr_is_tty(), "tokens", 1);
      ppl.progress = [&](int64_t scored, int64_t) { meter.update(static_cast<uint64_t>(scored)); };
      const auto result = prime::eval::perplexity(logits_fn, *ppl_data, ppl, vocab);
      meter.finish();
      std::printf("perplexity on %s: ctx %lld, stride %lld, %lld windows, %lld tokens scored\n", ppl_shard.c_str(),
                  static_cast<long long>(result.ctx), static_cast<long long>(result.stride),
                  static_cast<long long>(result.windows), static_cast<long long>(result.tokens_scored));
      std::printf("  NLL %.4f nats/token   PPL %.3f   bits/byte %s\n", result.nll_mean, result.ppl,
                  std::isnan(result.bits_per_byte) ? "n/a (shard has no byte count)"
                                                   : std::to_string(result.bits_per_byte).c_str());
      results["ppl"] = prime::eval::to_json(result);
      results["ppl"]["shard"] = ppl_shard;
    }
    if (recall) {
      const prime::eval::ProbeVocabulary vocabulary(haystack_data ? &*haystack_data : nullptr, vocab, seed);
      if (want_needle) {
        needle.trials = trials, needle.seed = seed, needle.batch = batch;
        const auto result = prime::eval::run_needle(logits_fn, vocabulary, needle);
        prime::eval::print_needle_table(result, std::cout);
        results["needle"] = prime::eval::to_json(result);
      }
      if (want_mqar) {
        mqar.trials = trials, mqar.seed = seed, mqar.batch = batch;
        const auto result = prime::eval::run_mqar(logits_fn, vocabulary, mqar);
        prime::eval::print_mqar_table(result, std::cout);
        results["mqar"] = prime::eval::to_json(result);
      }
      results["haystack"] = haystack_data ? haystack_data->path().string() : "random ids";
    }
    if (!json_path.empty()) {
      prime::eval::write_json_file(json_path, results);
      std::cout << "wrote " << json_path << "\n";
    }
    if (ppl_data || recall) {
      if (dump_logits.empty() && generate == 0) return;
    }
    const auto ids = parse_ids(token_ids);
    at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
    at::NoGradGuard no_grad;
    if (!dump_logits.empty()) {
      at::Tensor logits = loaded.model->forward(input).squeeze(0).to(at::kFloat).cpu().contiguous();
      prime::io::save_tensor_file(dump_logits, {{"logits", logits}}, {{"model", model_spec}});
      std::cout << "wrote logits [" << logits.size(0) << ", " << logits.size(1) << "] to " << dump_logits << "\n";
    }
    if (generate > 0) {
      prime::eval::GenerateOptions gen{generate, {}};
      const auto tokens = prime::eval::greedy_generate(*loaded.model, input, gen);
      std::cout << "generated:";
      for (int64_t token : tokens.front()) std::cout << " " << token;
      std::cout << "\n";
    }
    if (dump_logits.empty() && generate == 0) {
      at::Tensor logits = loaded.model->forward(input).to(at::kFloat);
      at::Tensor next = logits.select(1, logits.size(1) - 1).argmax(-1);
      std::cout << "next token: " << next.item<int64_t>() << "\n";
    }
  });
}
