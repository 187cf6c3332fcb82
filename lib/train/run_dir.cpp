#include "train/run_dir.h"

#include <filesystem>
#include <fstream>

#include "io/atomic_dir.h"
#include "util/error.h"

namespace prime::train {
namespace fs = std::filesystem;

void prepare_run_dir(TrainOptions& options) {
  const fs::path run_dir = options.out;
  if (options.resume) {
    const nlohmann::json saved = read_run_json(run_dir.string());
    if (options.model.empty()) options.model = saved["plan"].value("model", "");
    if (options.teacher.empty()) options.teacher = saved["plan"].value("teacher", "");
    const nlohmann::json plan = plan_json(options);
    for (const auto& [key, value] : plan.items())
      if (!saved["plan"].contains(key) || saved["plan"][key] != value)
        throw user_error("--resume ", run_dir.string(), ": this run was started with ", key, " = ",
                         saved["plan"].value(key, nlohmann::json()).dump(), ", this command has ", value.dump(),
                         " (a checkpoint of another plan)");
    return;
  }
  std::error_code error;
  if (fs::exists(run_dir, error) && !fs::is_empty(run_dir, error))
    throw user_error("--out ", run_dir.string(), " exists and is not empty: pass --resume ", run_dir.string(),
                     " to continue that run, or choose another --out");
}

void write_run_json(const TrainOptions& options, const std::string& command_line, const RunModels& models,
                    const nlohmann::json& sizes) {
  nlohmann::json run = {{"command_line", command_line},
                        {"prime_version", PRIME_VERSION},
                        {"plan", plan_json(options)},
                        {"options",
                         {{"tokens", options.tokens}, {"lr", options.lr}, {"schedule", schedule_name(options.schedule)},
                          {"warmup", options.warmup}, {"min_lr_ratio", options.min_lr_ratio},
                          {"weight_decay", options.weight_decay}, {"betas", {options.beta1, options.beta2}},
                          {"grad_clip", options.grad_clip}, {"temperature", options.temperature},
                          {"ce_weight", options.ce_weight}, {"device", options.device}, {"dtype", options.dtype},
                          {"recompute", options.recompute}, {"save_every", options.save_every}, {"keep", options.keep}}},
                        {"sizes", sizes},
                        {"student_parameters", models.student_parameters},
                        {"teacher_parameters", models.teacher_parameters},
                        {"trained_parameters", models.trained_parameters},
                        {"shared_tensors", models.shared_tensors},
                        {"replaced_layers", models.replaced_layers},
                        {"layer_pattern", io::join_layer_pattern(models.student->config().layer_pattern)}};
  fs::create_directories(options.out);
  io::write_file_atomically(fs::path(options.out) / "run.json", run.dump(2) + "\n", true, "run.json");
}

}  // namespace prime::train
