// Everything a priming run is told (prime-train's flags, design/training.md), and the sizes they
// imply. A sweep trial fills the same struct.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "train/schedule.h"

namespace prime::train {

enum class Stage { Align, Distill, Pt };
enum class AlignLayers { None, Mixer, Block };

struct TrainOptions {
  std::string model;    // a model spec (directory, SOURCE+convert:..., synthetic:...)
  std::string teacher;  // a source; required by align and distill
  Stage stage = Stage::Pt;
  std::vector<std::string> data, val_data;
  int64_t tokens = 0, batch_tokens = 0, seq_len = 0;
  int64_t micro_batch_tokens = 0;  // 0: the whole batch in one pass (per rank)
  double lr = 1e-3;
  ScheduleKind schedule = ScheduleKind::Cosine;
  int64_t warmup = 0;
  double min_lr_ratio = 0.1;
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, grad_clip = 1.0;
  std::string train;  // parameter groups; empty: the stage's default
  AlignLayers align_layers = AlignLayers::None;
  double temperature = 1, ce_weight = 0;
  std::string out;
  bool resume = false;
  int64_t save_every = 0, keep = 3, eval_every = 0, val_tokens = 65536;
  int64_t max_bad_steps = 8, max_rollbacks = 3;
  std::string metrics;  // extra JSONL file (RUN_DIR/metrics.jsonl is always written)
  std::string device = "cpu";
  std::string dtype = "fp32";
  bool recompute = false;
  std::string dist_backend = "auto";  // data parallel: auto (NCCL on CUDA), nccl or gloo
  uint64_t seed = 0;
  int64_t log_every = 1;
  int64_t loss_chunk_tokens = 0;  // 0: from the vocabulary and device (step_loss.cpp)
  double peak_tflops = 0;  // 0: the device's known bf16 peak (H100/H200 989), none on CPU
};

// The flags that arrive as text and are checked and converted by apply_flags.
struct TrainFlags {
  std::string stage, schedule = "cosine", align_layers;  // stage: align; align_layers: none
  std::string tokens, batch_tokens, seq_len, micro_batch_tokens, val_tokens;
  std::string resume;  // --resume RUN_DIR: sets out (which may repeat it) and resume
};

// Parses the text flags into options; UserError naming the flag for a missing or bad value. With
// --resume, the stage, data, sizes, align layers, groups and seed the command leaves out are the
// run's own (from its run.json).
void apply_flags(const TrainFlags& flags, TrainOptions& options);

Stage parse_stage(const std::string& name);
const char* stage_name(Stage stage);
AlignLayers parse_align_layers(const std::string& name);
const char* align_layers_name(AlignLayers layers);
// The groups a stage trains when --train is not given.
const char* default_groups(Stage stage);
// "50M", "256K", "1.5B", "4096" -> count, K/M/B binary (2^10, 2^20, 2^30); UserError naming the
// flag otherwise.
int64_t parse_count(const std::string& text, const std::string& flag);

// RUN_DIR/run.json, checked to hold a plan (UserError otherwise).
nlohmann::json read_run_json(const std::string& run_dir);

// The options that define a run's plan: a resumed run must be started with the same.
nlohmann::json plan_json(const TrainOptions& options);

}  // namespace prime::train
