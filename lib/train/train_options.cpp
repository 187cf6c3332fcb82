#include "train/train_options.h"

#include <cmath>
#include <fstream>

#include "util/error.h"
#include "util/quantity.h"

namespace prime::train {

Stage parse_stage(const std::string& name) {
  if (name == "align") return Stage::Align;
  if (name == "distill") return Stage::Distill;
  if (name == "pt") return Stage::Pt;
  throw user_error("--stage: unknown stage '", name, "' (align, distill, pt)");
}

const char* stage_name(Stage stage) {
  switch (stage) {
    case Stage::Align: return "align";
    case Stage::Distill: return "distill";
    case Stage::Pt: return "pt";
  }
  return "?";
}

AlignLayers parse_align_layers(const std::string& name) {
  if (name == "none") return AlignLayers::None;
  if (name == "mixer") return AlignLayers::Mixer;
  if (name == "block") return AlignLayers::Block;
  throw user_error("--align-layers: unknown value '", name, "' (none, mixer, block)");
}

const char* align_layers_name(AlignLayers layers) {
  switch (layers) {
    case AlignLayers::None: return "none";
    case AlignLayers::Mixer: return "mixer";
    case AlignLayers::Block: return "block";
  }
  return "?";
}

const char* default_groups(Stage stage) {
  switch (stage) {
    case Stage::Align: return "ssm";
    case Stage::Distill: return "ssm,norm";
    case Stage::Pt: return "all";
  }
  return "all";
}

int64_t parse_count(const std::string& text, const std::string& flag) {
  if (text.empty()) throw user_error(flag, ": empty value");
  const std::optional<double> value = parse_quantity_text(text);
  if (!value || !(*value > 0))
    throw user_error(flag, ": '", text, "' is not a positive count (e.g. 4096, 256K, 50M, 1.5B)");
  return static_cast<int64_t>(std::llround(*value));
}

void apply_flags(const TrainFlags& given, TrainOptions& options) {
  TrainFlags flags = given;
  if (!flags.resume.empty()) {
    if (!options.out.empty() && options.out != flags.resume)
      throw user_error("--resume ", flags.resume, " and --out ", options.out, " name different runs");
    options.out = flags.resume;
    options.resume = true;
    // What the command leaves out is what the run was started with.
    const nlohmann::json run = read_run_json(flags.resume);
    const nlohmann::json& plan = run.at("plan");
    auto text = [](const nlohmann::json& value) { return value.is_string() ? value.get<std::string>() : value.dump(); };
    if (flags.stage.empty()) flags.stage = text(plan.at("stage"));
    if (flags.align_layers.empty()) flags.align_layers = text(plan.at("align_layers"));
    if (flags.batch_tokens.empty()) flags.batch_tokens = text(plan.at("batch_tokens"));
    if (flags.seq_len.empty()) flags.seq_len = text(plan.at("seq_len"));
    if (flags.tokens.empty() && run.contains("options")) flags.tokens = text(run["options"].at("tokens"));
    if (options.data.empty()) options.data = plan.at("data").get<std::vector<std::string>>();
    if (options.train.empty()) options.train = plan.at("train").get<std::string>();
    if (options.seed == 0) options.seed = plan.at("seed").get<uint64_t>();
    if (options.model.empty()) options.model = plan.at("model").get<std::string>();
    if (options.teacher.empty()) options.teacher = plan.at("teacher").get<std::string>();
  }
  options.stage = parse_stage(flags.stage.empty() ? "align" : flags.stage);
  options.schedule = parse_schedule(flags.schedule);
  options.align_layers = parse_align_layers(flags.align_layers.empty() ? "none" : flags.align_layers);
  if (options.model.empty()) throw user_error("--model is required");
  if (options.data.empty()) throw user_error("--data is required");
  if (options.out.empty()) throw user_error("--out RUN_DIR is required");
  struct Count {
    const std::string& text;
    const char* flag;
    int64_t& target;
  };
  for (const Count& count : {Count{flags.tokens, "--tokens", options.tokens},
                             Count{flags.batch_tokens, "--batch-tokens", options.batch_tokens},
                             Count{flags.seq_len, "--seq-len", options.seq_len}}) {
    if (count.text.empty()) throw user_error(count.flag, " is required");
    count.target = parse_count(count.text, count.flag);
  }
  if (!flags.micro_batch_tokens.empty())
    options.micro_batch_tokens = parse_count(flags.micro_batch_tokens, "--micro-batch-tokens");
  if (!flags.val_tokens.empty()) options.val_tokens = parse_count(flags.val_tokens, "--val-tokens");
}

nlohmann::json read_run_json(const std::string& run_dir) {
  const std::string path = run_dir + "/run.json";
  std::ifstream in(path);
  if (!in) throw user_error("--resume ", run_dir, ": no run.json there (not a prime-train run directory)");
  const auto run = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (run.is_discarded() || !run.is_object() || !run.contains("plan") || !run["plan"].is_object())
    throw user_error(path, ": not a valid run.json");
  try {
    for (const char* key : {"model", "teacher", "stage", "train", "align_layers"}) (void)run["plan"].at(key).get<std::string>();
    (void)run["plan"].at("data").get<std::vector<std::string>>();
    (void)run["plan"].at("seed").get<uint64_t>();
    (void)run["plan"].at("batch_tokens").get<int64_t>();
    (void)run["plan"].at("seq_len").get<int64_t>();
  } catch (const nlohmann::json::exception& error) {
    throw user_error(path, ": not a valid run.json (", error.what(), ")");
  }
  return run;
}

nlohmann::json plan_json(const TrainOptions& options) {
  return {{"model", options.model},
          {"teacher", options.teacher},
          {"stage", stage_name(options.stage)},
          {"data", options.data},
          {"batch_tokens", options.batch_tokens},
          {"seq_len", options.seq_len},
          {"train", options.train},
          {"align_layers", align_layers_name(options.align_layers)},
          {"seed", options.seed}};
}

}  // namespace prime::train
