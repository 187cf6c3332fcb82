// prime-eval: run a model (Transformer or hybrid) on token ids: dump logits, greedy-generate;
// perplexity on a token shard (--ppl); long-context recall probes (--recall: needle, MQAR).
// Flags only: the evaluation is eval::run_eval.
#include <CLI/CLI.hpp>

#include <iostream>

#include "data/progress.h"
#include "eval/eval_run.h"
#include "util/cli.h"
#include "util/cli_checks.h"

int main(int argc, char** argv) {
  CLI::App app{"prime-eval: evaluate a Transformer or hybrid checkpoint"};
  prime::eval::EvalRequest request;
  app.add_option("--model", request.model,
                 "checkpoint dir, known alias, HF id in the cache, synthetic:ALIAS[@k=v,...], or SPEC+convert:LAYER:A:S")
      ->required()->group("Model");
  app.add_option("--device", request.device, "cpu, cuda, cuda:N or auto (default)")->group("Model");
  app.add_option("--dtype", request.dtype, "weights dtype: fp32, bf16, fp16 or fp64 (default: the checkpoint's)")
      ->group("Model");
  app.add_option("--batch", request.batch, "sequences per forward for --ppl and --recall (default 4)")
      ->check(prime::positive_number())->group("Model");
  app.add_option("--token-ids", request.token_ids, "comma-separated input token ids (default 1,2,3,4)")->group("Input");
  app.add_option("--dump-logits", request.dump_logits,
                 "write float32 logits [T, vocab] as tensor 'logits' to this .safetensors")->group("Output");
  app.add_option("--generate", request.generate, "greedy-decode N tokens after the input and print their ids")
      ->check(prime::non_negative_number())->group("Output");
  app.add_option("--json", request.json_path,
                 "also write the results (--ppl, --recall, the prompt and its generated ids) to this JSON file")
      ->group("Output");
  app.add_flag("--force", request.force, "replace existing --dump-logits / --json files")->group("Output");
  auto& ppl = request.ppl;
  app.add_option("--ppl", request.ppl_shard, "token shard: perplexity, NLL and bits per byte over strided windows")
      ->group("Perplexity");
  app.add_option("--ctx", ppl.ctx, "window length (default 1024)")
      ->check(prime::positive_number())->group("Perplexity");
  app.add_option("--stride", ppl.stride, "window step; each window scores its last `stride` tokens (default ctx/2)")
      ->group("Perplexity");
  app.add_option("--max-tokens", ppl.max_tokens, "use only the shard's first N tokens (default all)")->group("Perplexity");
  auto& needle = request.needle;
  auto& mqar = request.mqar;
  app.add_flag("--recall", request.recall, "run the recall probes (needle in a haystack, MQAR)")->group("Recall");
  app.add_option("--probes", request.probes, "which probes: needle,mqar (default both)")->group("Recall");
  app.add_option("--haystack", request.haystack,
                 "token shard for filler and probe ids (default: --ppl's shard, else random ids)")->group("Recall");
  app.add_option("--needle-lengths", needle.lengths, "context lengths (default 256,1024)")->delimiter(',')->group("Recall");
  app.add_option("--needle-depths", needle.depths, "needle depths in [0,1] (default 0,0.25,0.5,0.75,1)")
      ->delimiter(',')->group("Recall");
  app.add_option("--key-tokens", needle.key_tokens, "needle key length (default 4)")->group("Recall");
  app.add_option("--value-tokens", needle.value_tokens, "needle value length (default 4)")->group("Recall");
  app.add_option("--mqar-pairs", mqar.pairs, "key/value pairs (default 4,16,64)")->delimiter(',')->group("Recall");
  app.add_option("--mqar-lengths", mqar.lengths, "sequence lengths (default 256,1024)")->delimiter(',')->group("Recall");
  app.add_option("--trials", request.trials, "sequences per probe cell (default 10)")
      ->check(prime::positive_number())->group("Recall");
  app.add_option("--seed", request.seed, "probe seed (default 0)")
      ->check(prime::non_negative_number())->group("Recall");
  if (auto exit_code = prime::parse_command_line(app, "prime-eval", argc, argv)) return *exit_code;

  return prime::run_command("prime-eval", [&] {
    prime::eval::run_eval(request, std::cout, &std::cerr, prime::data::ProgressMeter::stderr_is_tty());
  });
}
