// Run directories and checkpoints (design/training.md "Run directory"). A checkpoint is the model
// exactly as prime-convert writes one (config.json + safetensors + the source's tokenizer files,
// so prime-eval loads it as is) plus trainer_state.safetensors (optimizer moments and fp32 master
// copies of trained tensors saved in a narrower dtype) and trainer.json (counters, data
// position, seed, learning-rate scale). Each is staged beside its final name and renamed into
// place; `final` then points at it; older ones beyond --keep are removed only after that.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "model/weights.h"
#include "train/adamw.h"

namespace prime::train {

struct TrainerCounters {
  int64_t step = 0;            // optimizer steps taken
  int64_t tokens = 0;          // tokens trained on (global)
  int64_t data_position = 0;   // TrainData::position()
  int64_t bad_steps = 0;       // non-finite steps skipped, in all
  int64_t bad_in_row = 0;
  int64_t rollbacks = 0;
  double lr_scale = 1;         // halved by each rollback
  uint64_t seed = 0;

  nlohmann::json to_json() const;
  static TrainerCounters from_json(const nlohmann::json& json, const std::string& where);
};

struct CheckpointContents {
  const io::ModelConfig* config;
  const model::TensorMap* weights;        // every tensor of the model
  at::ScalarType save_dtype;              // floating tensors are written in this dtype (A_log,
                                          // dt_bias, D stay fp32)
  const AdamW* optimizer;
  TrainerCounters counters;
  std::filesystem::path carry_from;       // a source directory whose tokenizer files are copied
  nlohmann::json provenance;              // written as prime.json
};

// The checkpoint's model card (README.md): what was trained from what, stage, teacher, data, steps
// and tokens, from the model's config and the provenance; the license of the model card in
// carry_from, if it names one. No timestamps: the same run gives the same card.
std::string checkpoint_card(const nlohmann::json& config, const nlohmann::json& provenance,
                            const std::filesystem::path& carry_from);

// "checkpoints/step-000400" for step 400.
std::filesystem::path checkpoint_path(const std::filesystem::path& run_dir, int64_t step);

// Writes one checkpoint atomically, points RUN_DIR/final at it, then keeps the newest `keep`.
std::filesystem::path write_checkpoint(const std::filesystem::path& run_dir, const CheckpointContents& contents,
                                       int64_t keep);

// Completed checkpoints of a run, oldest first (staging directories are not listed).
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& run_dir);

struct LoadedTrainerState {
  model::TensorMap optimizer;     // AdamW::state() as saved
  model::TensorMap master;        // name -> fp32 master copy (only those saved narrower)
  TrainerCounters counters;
};

// Reads trainer_state.safetensors + trainer.json of a checkpoint (UserError when absent or bad).
LoadedTrainerState read_trainer_state(const std::filesystem::path& checkpoint);

}  // namespace prime::train
