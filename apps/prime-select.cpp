// prime-select: per-layer scores of a Transformer (higher = safer to replace with an SSM), the
// layers each attention:SSM ratio would keep, and the predicted loss increase.
#include <CLI/CLI.hpp>

#include <iostream>

#include "io/atomic_dir.h"
#include "search/scorers/select.h"
#include "util/cli.h"
#include "util/cli_checks.h"
#include "util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"prime-select: score every layer of a Transformer by how safely it can be replaced by an SSM, "
               "and choose the attention layers per ratio"};
  prime::search::SelectOptions options;
  auto& s = options.settings;
  std::string ratios;
  app.add_option("--source", options.source, "checkpoint dir, known alias or HF id (HF cache), or synthetic:ALIAS[@k=v,...]")
      ->required()->group("Source");
  app.add_option("--scorer", options.scorer, "scorer: " + prime::search::scorer_names())->required()->group("Scorer");
  app.add_option("--data", options.data, "token shard (prime-data) the scoring sequences come from")->group("Scorer");
  app.add_option("--window", s.window, "W: the local span (default 128); tokens beyond it count as far")->group("Scorer");
  app.add_option("--seq-len", s.seq_len, "scoring sequence length (default 512; > W)")->group("Scorer");
  app.add_option("--sequences", s.sequences, "scoring sequences (default 8)")->group("Scorer");
  app.add_option("--batch", s.batch, "sequences per forward (default 4)")->group("Scorer");
  app.add_option("--seed", s.seed, "which windows of the shard are scored, training order (default 0)")
      ->check(prime::non_negative_number())->group("Scorer");
  app.add_option("--probes", s.probes, "swa-sensitivity: MQAR recall-probe sequences of --seq-len tokens (default 16)")
      ->group("Scorer");
  app.add_option("--probe-pairs", s.probe_pairs, "swa-sensitivity: key/value pairs per probe sequence (default 8)")
      ->group("Scorer");
  app.add_option("--recall-weight", s.recall_weight,
                 "swa-sensitivity: weight of the recall-drop term against the NLL term, both standardised over "
                 "the layers (default 1; 0 = NLL only)")->group("Scorer");
  app.add_option("--layer", s.layer, "SSM replacing layers: GDN (default), GKA or M2 (linearization-error, kl-restore)")
      ->group("Training scorers");
  app.add_option("--align-steps", s.align_steps, "linearization-error: layer-local alignment steps first (default 0)")
      ->group("Training scorers");
  app.add_option("--restore-align-steps", s.restore_align_steps,
                 "kl-restore: alignment steps of the all-SSM student (default 50)")->group("Training scorers");
  app.add_option("--restore-steps", s.restore_steps, "kl-restore: distillation steps per restored layer (default 20)")
      ->group("Training scorers");
  app.add_option("--lr", s.lr, "learning rate of those steps (default 1e-3)")->group("Training scorers");
  app.add_option("--ratios", ratios, "attention:SSM ratios to report, e.g. 1:1,1:3,1:7 (default 1:3)")->group("Output");
  app.add_option("--out", options.out, "write the scores as CSV (prime-convert --scores reads it)")->group("Output");
  app.add_flag("--force", options.force, "replace an existing --out")->group("Output");
  app.add_option("--store", options.store, "experiment store (SQLite path or postgresql://...): scores to its layer_scores")
      ->group("Output");
  app.add_option("--device", options.device, "cpu (default), cuda or auto")->group("Device");
  app.add_option("--dtype", options.dtype, "fp32 (default), bf16 or fp16 (the training scorers run in fp32)")
      ->group("Device");
  if (auto exit_code = prime::parse_command_line(app, "prime-select", argc, argv)) return *exit_code;

  return prime::run_command("prime-select", [&] {
    if (app.count("--ratios") > 0 && ratios.empty())
      throw prime::user_error("--ratios is empty (expected e.g. 1:1,1:3,1:7)");
    if (!ratios.empty()) {
      s.ratios.clear();
      std::string part;
      for (char c : ratios + ",") {
        if (c != ',') { part += c; continue; }
        if (part.empty()) throw prime::user_error("--ratios '", ratios, "': an empty ratio");
        s.ratios.push_back(part);
        part.clear();
      }
    }
    if (!options.out.empty()) prime::check_output_file(options.out, "--out", options.force);
    const auto outcome = prime::search::run_select(options, &std::cerr);
    prime::search::print_select(outcome, std::cout);
    if (!options.out.empty()) {
      prime::io::write_file_atomically(options.out, prime::search::scores_csv(outcome), options.force, "--out");
      std::cout << "scores written to " << options.out << "\n";
    }
    if (!options.store.empty())  // after --out, so a refused --out leaves the store as it was
      std::cout << "scores stored in " << prime::search::store_scores(outcome, options.store) << "\n";
  });
}
