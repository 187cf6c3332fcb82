// Layer-selection scorers: per layer of a Transformer, how safely it can be replaced by an SSM (or
// a sliding window). Every scorer sees the same context (the teacher, the scoring sequences, the
// window) and returns one score per layer, higher = safer to replace, plus what it measured in
// its own unit and, where it measured one, the loss increase of replacing every layer, which
// calibrates the predicted loss of a hybrid (ratio_report.h).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "data/token_shard.h"
#include "model/hybrid_model.h"

namespace prime::search {

// What prime-select is told, beyond the source and the scorer's name.
struct ScorerSettings {
  int64_t window = 128;        // --window W: the local span a replaced layer is assumed to keep
  int64_t seq_len = 512;       // --seq-len: scoring sequences' length (W < seq_len)
  int64_t sequences = 8;       // --sequences: how many are scored
  int64_t batch = 4;           // --batch: sequences per forward
  uint64_t seed = 0;           // --seed: which windows of the shard, and training order
  std::string layer = "GDN";   // --layer: the SSM that replaces layers (linearization-error, kl-restore)
  int64_t align_steps = 0;     // --align-steps: layer-local alignment steps (linearization-error;
                               // kl-restore's all-SSM student uses restore_align_steps)
  int64_t restore_align_steps = 50;  // --restore-align-steps (kl-restore)
  int64_t restore_steps = 20;  // --restore-steps: distillation steps per restored layer (kl-restore)
  double lr = 1e-3;            // --lr of the alignment and distillation steps
  int64_t probes = 16;         // --probes: MQAR recall-probe sequences (swa-sensitivity)
  int64_t probe_pairs = 8;     // --probe-pairs: key/value pairs per probe sequence (of --seq-len)
  double recall_weight = 1.0;  // --recall-weight: the recall term's weight in swa-sensitivity's score
  std::vector<std::string> ratios = {"1:3"};  // the baselines place their layers for the first
};

// The teacher and the sequences every scorer works on.
struct ScoringContext {
  std::string source;                // the teacher's spec (what convert reads)
  model::HybridModel* teacher = nullptr;  // null for the baselines
  int64_t num_layers = 0;
  std::vector<at::Tensor> inputs;    // scoring batches: ids [b, seq_len] int64 on the device
  std::vector<at::Tensor> targets;   // the next tokens [b, seq_len] int64 on the device
  std::vector<at::Tensor> train_inputs;  // other windows of the shard, for the training scorers
  const io::TokenShard* shard = nullptr;  // --data (recall probes draw filler and ids from it)
  ScorerSettings settings;
  at::Device device = at::kCPU;
  std::ostream* log = nullptr;       // progress lines (may be null)
};

struct ScorerResult {
  std::vector<double> scores;        // one per layer, higher = safer to replace
  std::vector<double> cost;          // what was measured per layer (higher = more harm), cost_unit
  std::string cost_unit;
  // Increase in NLL (nats/token, over the scoring sequences) with every layer replaced, measured
  // by the scorer; absent for the baselines. Predictions scale it by the replaced layers' share
  // of the total cost.
  std::optional<double> total_increase;
  std::string detail;                // one line: what the scorer did (passes, steps)
  // Extra per-layer columns for the printed table (name, values).
  std::vector<std::pair<std::string, std::vector<double>>> columns;
};

using ScorerFn = std::function<ScorerResult(const ScoringContext&)>;

struct ScorerInfo {
  std::string name;
  std::string summary;     // one line for --help and errors
  bool needs_data = true;  // the baselines do not read the shard
  bool trains = false;     // runs optimisation steps (fp32 only)
  ScorerFn run;
};

// Every scorer, in the order --help lists them.
const std::vector<ScorerInfo>& scorers();
// UserError naming the known scorers when `name` is not one.
const ScorerInfo& find_scorer(const std::string& name);
std::string scorer_names();  // "swa-sensitivity, attention-locality, ..."

// The scorers themselves (one file each).
ScorerResult score_swa_sensitivity(const ScoringContext& context);
ScorerResult score_attention_locality(const ScoringContext& context);
ScorerResult score_linearization_error(const ScoringContext& context);
ScorerResult score_kl_restore(const ScoringContext& context);
ScorerResult score_uniform(const ScoringContext& context);
ScorerResult score_middle(const ScoringContext& context);

}  // namespace prime::search
