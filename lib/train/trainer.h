// prime-train's whole run: models, data, optimizer, the step loop with its guards, evaluation,
// checkpoints and metrics (design/training.md). A sweep trial calls run_training as the CLI does.
#pragma once

#include <ostream>
#include <string>

#include "train/train_options.h"
#include "util/metrics.h"

namespace prime::train {

struct TrainResult {
  std::string run_dir, final_checkpoint;
  int64_t steps = 0, tokens = 0, bad_steps = 0, rollbacks = 0;
  int64_t steps_run = 0;   // optimizer steps taken by this call (0: a resumed run had none left)
  int64_t tokens_run = 0;  // tokens those steps trained on
  // seconds: this call's; tokens_per_second: tokens_run / seconds.
  double last_loss = 0, last_val_ppl = 0, seconds = 0, tokens_per_second = 0;
};

// `extra_metrics` (optional) receives every record as well (the experiment store, say).
// `log` gets the progress lines. UserError for bad options, data, models or a diverged run
// (after its last good checkpoint is kept).
TrainResult run_training(const TrainOptions& options, const std::string& command_line, std::ostream& log,
                         MetricsSink* extra_metrics = nullptr);

}  // namespace prime::train
