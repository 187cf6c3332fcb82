// prime-train: priming — align a converted hybrid to its source, distil it, or train next-token
// (design/training.md). Flags only: the run is train::run_training.
#include <CLI/CLI.hpp>

#include <iostream>

#include "train/trainer.h"
#include "util/cli.h"
#include "util/cli_checks.h"

int main(int argc, char** argv) {
  using namespace prime::train;
  CLI::App app{"prime-train: align, distil or train a model (priming)"};
  TrainOptions options;
  TrainFlags flags;
  auto& [stage, schedule, align_layers, tokens, batch_tokens, seq_len, micro_batch_tokens, val_tokens, resume] = flags;
  app.add_option("--model", options.model,
                 "the student: a checkpoint dir, synthetic:ALIAS[@k=v,...] or SOURCE+convert:LAYER:A:S")->group("Models");
  app.add_option("--teacher", options.teacher, "the frozen source model (align and distill)")->group("Models");
  app.add_option("--stage", stage, "align | distill | pt (default align)")->group("Models");
  app.add_option("--train", options.train,
                 "parameter groups to train: ssm, attn, mlp, norm, embed, head, all; comma-separated "
                 "(default: align ssm, distill ssm,norm, pt all)")->group("Models");
  app.add_option("--data", options.data, "token shard(s) from prime-data, comma-separated")->delimiter(',')
      ->group("Data");
  CLI::Option* val_data =
      app.add_option("--val-data", options.val_data, "held-out token shard for --eval-every")->delimiter(',')->group("Data");
  app.add_option("--tokens", tokens, "token budget, e.g. 50M (K/M/B = 2^10/2^20/2^30)")->group("Data");
  app.add_option("--batch-tokens", batch_tokens, "tokens per optimizer step (all ranks), e.g. 256K")->group("Data");
  app.add_option("--seq-len", seq_len, "tokens per sequence")->group("Data");
  app.add_option("--micro-batch-tokens", micro_batch_tokens,
                 "tokens per forward pass per rank; the rest is gradient accumulation (default: the whole batch)")
      ->group("Data");
  app.add_option("--seed", options.seed, "data order seed (default 0)")
      ->check(prime::non_negative_number())->group("Data");
  app.add_option("--lr", options.lr, "peak learning rate (default 1e-3)")
      ->check(prime::positive_number())->group("Optimizer");
  app.add_option("--schedule", schedule, "constant | cosine | wsd (default cosine)")->group("Optimizer");
  app.add_option("--warmup", options.warmup, "warm-up steps (default 0)")->group("Optimizer");
  app.add_option("--min-lr-ratio", options.min_lr_ratio, "final LR / peak LR for cosine and wsd (default 0.1)")
      ->group("Optimizer");
  app.add_option("--weight-decay", options.weight_decay, "AdamW decay, not on norms/biases/A_log/dt_bias/D (0.1)")
      ->group("Optimizer");
  app.add_option("--grad-clip", options.grad_clip, "clip the global gradient norm to this (default 1; 0 = off)")
      ->check(prime::non_negative_number())
      ->group("Optimizer");
  app.add_option("--align-layers", align_layers,
                 "align: also match each replaced layer's mixer or block output on the teacher's input "
                 "(none | mixer | block)")->group("Losses");
  app.add_option("--temperature", options.temperature, "distill: softmax temperature (default 1)")->group("Losses");
  app.add_option("--ce-weight", options.ce_weight, "distill: weight of next-token CE added to the KL (default 0)")
      ->group("Losses");
  app.add_option("--out", options.out, "run directory (run.json, metrics.jsonl, checkpoints/, final)")->group("Run");
  app.add_option("--resume", resume, "continue the run in this directory from its last checkpoint")->group("Run");
  app.add_option("--save-every", options.save_every, "checkpoint every N steps (and at the end)")
      ->check(prime::non_negative_number())->group("Run");
  app.add_option("--keep", options.keep, "keep the newest K checkpoints (default 3)")
      ->check(prime::positive_number())->group("Run");
  // Each without the other would be silently unused.
  CLI::Option* eval_every =
      app.add_option("--eval-every", options.eval_every, "validation PPL on --val-data every N steps")
          ->check(prime::non_negative_number())->group("Run");
  eval_every->needs(val_data);
  val_data->needs(eval_every);
  app.add_option("--val-tokens", val_tokens, "tokens of --val-data to score (default 64K)")->needs(val_data)->group("Run");
  app.add_option("--max-bad-steps", options.max_bad_steps,
                 "non-finite steps in a row before rolling back to the last checkpoint with half the LR (default 8)")
                     ->check(prime::positive_number())
      ->group("Run");
  app.add_option("--metrics", options.metrics, "also append metrics (JSONL) to this file")->group("Run");
  app.add_option("--log-every", options.log_every, "progress line every N steps (default 1)")->group("Run");
  app.add_option("--device", options.device, "cpu (default), cuda, cuda:N")->group("Compute");
  app.add_option("--dtype", options.dtype, "fp32 (default) or bf16 (CUDA autocast; trained weights stay fp32)")
      ->group("Compute");
  app.add_flag("--recompute", options.recompute, "recompute each layer's activations in backward (less memory)")
      ->group("Compute");
  app.add_option("--loss-chunk-tokens", options.loss_chunk_tokens, "tokens per vocabulary-loss chunk (default: ~16 MB of logits on CPU, ~512 MB on GPU)")
      ->check(prime::positive_number())
      ->group("Compute");
  app.add_option("--peak-tflops", options.peak_tflops, "device bf16 peak for MFU (default: 989 on CUDA)")
      ->check(prime::positive_number())
      ->group("Compute");
  app.add_option("--dist-backend", options.dist_backend,
                 "data parallel under torchrun/srun: auto (NCCL on CUDA, Gloo on CPU), nccl or gloo")
      ->group("Compute");
  if (auto exit_code = prime::parse_command_line(app, "prime-train", argc, argv)) return *exit_code;

  return prime::run_command("prime-train", [&] {
    apply_flags(flags, options);
    std::string command_line;
    for (int i = 0; i < argc; ++i) command_line += (i ? " " : "") + std::string(argv[i]);
    const TrainResult result = run_training(options, command_line, std::cerr);
    if (result.steps_run == 0) {
      std::cout << "nothing to train: the run is complete at " << result.steps << " steps, " << result.tokens
                << " tokens\n";
      if (!result.final_checkpoint.empty()) std::cout << "checkpoint: " << result.final_checkpoint << "\n";
      return;
    }
    std::cout << "trained " << result.steps_run << " steps, " << result.tokens_run << " tokens in " << result.seconds
              << " s";
    if (result.steps_run < result.steps)  // a resumed run: the whole run so far too
      std::cout << " (the run: " << result.steps << " steps, " << result.tokens << " tokens)";
    std::cout << "; final loss " << result.last_loss;
    if (result.last_val_ppl > 0) std::cout << ", val ppl " << result.last_val_ppl;
    std::cout << "\n";
    if (!result.final_checkpoint.empty()) std::cout << "checkpoint: " << result.final_checkpoint << "\n";
  });
}
