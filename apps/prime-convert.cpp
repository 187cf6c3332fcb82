// prime-convert: turn a Transformer checkpoint into a primed hybrid (attention + SSM layers).
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <optional>

#include "convert/convert.h"
#include "search/scorers/select.h"
#include "util/cli.h"
#include "util/cli_checks.h"
#include "util/error.h"

namespace {

std::string quoted(const std::string& arg) {
  if (!arg.empty() && arg.find_first_of(" \t\"'*$`\\|&;<>()?[]{}!#~") == std::string::npos) return arg;
  std::string text = "'";
  for (char c : arg) text += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return text + "'";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"prime-convert: convert a Transformer (Qwen3, Qwen3-MoE, Qwen2.5, Llama-3.x, Mistral) into a hybrid "
               "of attention and SSM layers, initialised from the attention weights"};
  prime::convert::ConvertOptions options;
  bool dry_run = false, every_tensor = false, quiet = false, json = false;
  std::string out;
  app.add_option("--source", options.source, "checkpoint dir, known alias or HF id (HF cache), or synthetic:ALIAS[@k=v,...]")
      ->required()->group("Source");
  app.add_option("--layer", options.layers.layer, "SSM type for replaced layers: GKA, GDN, M2 (Mamba-2) or SWA")
      ->group("Layers");
  app.add_option("--ratio", options.layers.ratio,
                 "attention:SSM layers, e.g. 1:3 (n_attn = round(L*A/(A+S)), halves up, >= 1 if A > 0; 0:1 = all SSM)")
      ->group("Layers");
  app.add_option("--placement", options.layers.placement,
                 "where kept attention layers go: uniform (default: one per segment, mid-segment) or middle")
      ->group("Layers");
  app.add_option("--keep-attention", options.layers.keep_attention, "layers to keep as attention, e.g. 3,7,11")
      ->group("Layers");
  app.add_option("--pattern", options.layers.pattern, "every layer's type, HMF style: \"*-GKA-GKA-M2-...\"")
      ->group("Layers");
  app.add_option("--scores", options.layers.scores,
                 "per-layer scores CSV (layer,score or HMF importance CSV); higher = safer to replace")
      ->group("Layers");
  prime::search::SelectOptions select;
  select.flag_prefix = "--select-";
  app.add_option("--select", select.scorer,
                 "run a prime-select scorer (or reuse the scores it kept beside --out) and keep its lowest-scoring "
                 "layers: " + prime::search::scorer_names())
      ->group("Layers");
  app.add_option("--select-data", select.data, "token shard for --select (prime-select --data)")->group("Layers");
  app.add_option("--select-window", select.settings.window, "--select's W (default 128)")->group("Layers");
  app.add_option("--select-seq-len", select.settings.seq_len, "--select's sequence length (default 512)")->group("Layers");
  app.add_option("--select-device", select.device, "--select's device: cpu (default), cuda or auto")->group("Layers");
  app.add_option("--select-store", select.store, "--select reuses (or adds) the scores in this experiment store")
      ->group("Layers");
  app.add_option("--swa-window", options.swa_window, "window of SWA layers (default 2048)")->group("Layers");
  app.add_option("--init", options.init, "hmf (default), head, mambainllama or random")->group("Initialisation");
  app.add_option("--seed", options.seed, "seed of the random parts (default 0)")
      ->check(prime::non_negative_number())->group("Initialisation");
  app.add_option("--out", out, "output directory (written atomically)")->group("Output");
  app.add_flag("--force", options.force, "replace an existing output directory (never the source)")->group("Output");
  app.add_option("--dtype", options.dtype, "cast weights: bf16, fp16, fp32 or fp64 (default: keep the source's)")
      ->group("Output");
  double shard_gb = 5;
  app.add_option("--shard-size", shard_gb, "GB of tensors per shard (default 5)")->group("Output");
  app.add_flag("--dry-run", dry_run, "print the plan and write nothing")->group("Output");
  app.add_flag("--tensors", every_tensor, "list every output tensor in the plan")->group("Output");
  app.add_flag("--json", json, "with --dry-run: print the plan as JSON (for scripts)")->group("Output");
  app.add_flag("--quiet", quiet, "no progress display")->group("Output");
  if (auto exit_code = prime::parse_command_line(app, "prime-convert", argc, argv)) return *exit_code;

  return prime::run_command("prime-convert", [&] {
    options.out = out;
    if (!(shard_gb * 1e9 >= 1)) throw prime::user_error("--shard-size must be positive");
    options.max_shard_bytes = static_cast<uint64_t>(shard_gb * 1e9);
    options.command_line = "prime-convert";
    for (int i = 1; i < argc; ++i) options.command_line += " " + quoted(argv[i]);
    const auto style = quiet ? prime::convert::ProgressStyle::Quiet
                       : isatty(STDOUT_FILENO) ? prime::convert::ProgressStyle::Tty
                                               : prime::convert::ProgressStyle::Lines;
    std::optional<prime::search::ConvertSelection> selection;
    if (!select.scorer.empty()) {
      if (!options.layers.scores.empty()) throw prime::user_error("choose one of --scores and --select");
      select.source = options.source;
      if (!options.layers.ratio.empty()) select.settings.ratios = {options.layers.ratio};
      const std::string kept = out.empty() ? "" : out.substr(0, out.find_last_not_of('/') + 1) + "." + select.scorer + "-scores.csv";
      selection = prime::search::scores_for_convert(select, kept, std::cerr);
      options.layers.scores = selection->path;
    }
    struct RemoveTemporary {
      const std::optional<prime::search::ConvertSelection>& selection;
      ~RemoveTemporary() { if (selection && selection->temporary) std::remove(selection->path.c_str()); }
    } remove_temporary{selection};
    prime::convert::run_convert(options, dry_run, every_tensor, style, std::cout, json);
  });
}
