// The values a spec sets: quantities with units, prime-train options, and the names a trial
// measures.
#include <cmath>
#include <map>

#include "search/sweep/spec.h"
#include "train/schedule.h"
#include "util/error.h"
#include "util/quantity.h"

namespace prime::search {

namespace {

double number_value(const nlohmann::json& value, const std::string& path) {
  if (value.is_number()) return value.get<double>();
  throw user_error(path, ": expected a number, got ", value.dump());
}

int64_t count_value(const nlohmann::json& value, const std::string& path) {
  const double count = parse_quantity(value, path);
  if (!(count > 0) || count != std::floor(count)) throw user_error(path, ": expected a positive whole count, got ", value.dump());
  return static_cast<int64_t>(count);
}

int64_t int_value(const nlohmann::json& value, const std::string& path, int64_t minimum) {
  if (!value.is_number_integer() || value.get<int64_t>() < minimum)
    throw user_error(path, ": expected a whole number >= ", minimum, ", got ", value.dump());
  return value.get<int64_t>();
}

std::string string_value(const nlohmann::json& value, const std::string& path) {
  if (!value.is_string()) throw user_error(path, ": expected a string, got ", value.dump());
  return value.get<std::string>();
}

// Re-raises a prime-train parse error (which names a CLI flag) under the spec path.
template <typename Fn>
auto at_path(const std::string& path, Fn&& fn) {
  try {
    return fn();
  } catch (const UserError& error) {
    throw user_error(path, ": ", error.what());
  }
}

}  // namespace

double parse_quantity(const nlohmann::json& value, const std::string& path) {
  if (value.is_number()) return value.get<double>();
  if (!value.is_string()) throw user_error(path, ": expected a number or a size such as 64MiB or 2M, got ", value.dump());
  const std::string text = value.get<std::string>();
  const std::optional<double> parsed = parse_quantity_text(text);
  if (!parsed) throw user_error(path, ": '", text, "' is not a number or size (e.g. 64MiB, 500MB, 2M tokens, 1e-3)");
  return *parsed;
}

bool Constraint::satisfied(double value) const {
  if (op == "<=") return value <= bound;
  if (op == "<") return value < bound;
  if (op == ">=") return value >= bound;
  return value > bound;
}

const std::vector<std::string>& convert_names() {
  static const std::vector<std::string> names = {"layer", "ratio", "placement", "init", "convert_seed"};
  return names;
}

const std::vector<std::string>& train_names() {
  static const std::vector<std::string> names = {
      "tokens", "batch_tokens", "seq_len", "micro_batch_tokens", "lr", "schedule", "warmup", "min_lr_ratio",
      "weight_decay", "beta1", "beta2", "grad_clip", "train", "align_layers", "temperature", "ce_weight",
      "eval_every", "val_tokens", "max_bad_steps", "log_every", "device", "dtype", "recompute", "seed",
      "loss_chunk_tokens"};
  return names;
}

void apply_train_value(train::TrainOptions& options, const std::string& name, const nlohmann::json& value,
                       const std::string& path) {
  if (name == "tokens") options.tokens = count_value(value, path);
  else if (name == "batch_tokens") options.batch_tokens = count_value(value, path);
  else if (name == "seq_len") options.seq_len = count_value(value, path);
  else if (name == "micro_batch_tokens") options.micro_batch_tokens = count_value(value, path);
  else if (name == "val_tokens") options.val_tokens = count_value(value, path);
  else if (name == "loss_chunk_tokens") options.loss_chunk_tokens = count_value(value, path);
  else if (name == "lr") options.lr = number_value(value, path);
  else if (name == "min_lr_ratio") options.min_lr_ratio = number_value(value, path);
  else if (name == "weight_decay") options.weight_decay = number_value(value, path);
  else if (name == "beta1") options.beta1 = number_value(value, path);
  else if (name == "beta2") options.beta2 = number_value(value, path);
  else if (name == "grad_clip") options.grad_clip = number_value(value, path);
  else if (name == "temperature") options.temperature = number_value(value, path);
  else if (name == "ce_weight") options.ce_weight = number_value(value, path);
  else if (name == "warmup") options.warmup = int_value(value, path, 0);
  else if (name == "eval_every") options.eval_every = int_value(value, path, 0);
  else if (name == "max_bad_steps") options.max_bad_steps = int_value(value, path, 1);
  else if (name == "log_every") options.log_every = int_value(value, path, 1);
  else if (name == "seed") options.seed = static_cast<uint64_t>(int_value(value, path, 0));
  else if (name == "schedule")
    options.schedule = at_path(path, [&] { return train::parse_schedule(string_value(value, path)); });
  else if (name == "align_layers")
    options.align_layers = at_path(path, [&] { return train::parse_align_layers(string_value(value, path)); });
  else if (name == "train") options.train = string_value(value, path);
  else if (name == "device") options.device = string_value(value, path);
  else if (name == "dtype") options.dtype = string_value(value, path);
  else if (name == "recompute") {
    if (!value.is_boolean()) throw user_error(path, ": expected true or false, got ", value.dump());
    options.recompute = value.get<bool>();
  } else {
    throw user_error(path, ": unknown prime-train value '", name, "'");
  }
}

std::vector<std::string> measured_names(const SweepSpec& spec) {
  // Always: what training and the conversion report.
  std::vector<std::string> names;
  if (!spec.stages.empty()) names = {"train_loss", "train_seconds", "train_tokens"};
  if (spec.eval.ppl) names.insert(names.end(), {"val_ppl", "val_loss", "bits_per_byte"});
  for (const auto& probe : spec.eval.recall) names.push_back(probe + "_acc");
  if (!spec.eval.recall.empty()) names.push_back("recall");
  if (spec.eval.decode)
    names.insert(names.end(), {"decode_tok_s", "prefill_tok_s", "state_bytes", "kv_bytes", "ssm_state_bytes", "params"});
  return names;
}

}  // namespace prime::search
