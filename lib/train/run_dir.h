// A run directory's own files (design/training.md "Run directory"): run.json, written when a run
// starts, and the checks that come before anything is written there.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "train/models.h"
#include "train/train_options.h"

namespace prime::train {

// A new run: --out must not exist or be empty. A resumed one: run.json must exist and record the
// plan this command gives (UserError naming the first key that differs); a model or teacher the
// command leaves out is taken from it.
void prepare_run_dir(TrainOptions& options);

// run.json: the command line, resolved options, plan, sizes (steps, batch split, ranks) and the
// models' parameter counts. Creates the directory.
void write_run_json(const TrainOptions& options, const std::string& command_line, const RunModels& models,
                    const nlohmann::json& sizes);

}  // namespace prime::train
