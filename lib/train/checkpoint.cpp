#include "train/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>
#include <unistd.h>

#include "convert/model_card.h"
#include "io/atomic_dir.h"
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/safetensors_writer.h"
#include "io/tensor_file.h"
#include "model/hybrid_model.h"
#include "util/error.h"

namespace prime::train {
namespace fs = std::filesystem;
namespace {

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw user_error("cannot write ", path.string());
}

// Points run_dir/final at target (relative), replacing any previous link atomically.
void point_final(const fs::path& run_dir, const fs::path& target) {
  const fs::path link = run_dir / "final";
  const fs::path staging = run_dir / (".final.tmp-" + std::to_string(::getpid()));
  ::unlink(staging.c_str());
  if (::symlink(fs::relative(target, run_dir).c_str(), staging.c_str()) != 0 ||
      ::rename(staging.c_str(), link.c_str()) != 0) {
    const int error = errno;
    ::unlink(staging.c_str());
    throw user_error("cannot point ", link.string(), " at ", target.string(), ": ", std::strerror(error));
  }
}

// A provenance value as card text: strings as they are, lists joined by ", ", null as "".
std::string json_text(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_null()) return "";
  if (!value.is_array()) return value.dump();
  std::string text;
  for (const auto& item : value) text += (text.empty() ? "" : ", ") + json_text(item);
  return text;
}

}  // namespace

std::string checkpoint_card(const nlohmann::json& config, const nlohmann::json& provenance,
                            const std::filesystem::path& carry_from) {
  const nlohmann::json plan = provenance.value("plan", nlohmann::json::object());
  const std::string model = json_text(plan.value("model", nlohmann::json()));
  const std::string pattern = config.value("hybrid_override_pattern", "");
  std::ostringstream out;
  out << "---\n";
  const std::string license = convert::card_license(carry_from);
  if (!license.empty()) out << "license: " << license << "\n";
  out << "library_name: transformers\ntags:\n- prime\n";
  if (pattern.find_first_not_of("*-") != std::string::npos) out << "- hybrid\n";
  out << "---\n\n";
  const std::string name = fs::path(model).filename().empty() ? model : fs::path(model).filename().string();
  out << "# " << name << ": prime-train checkpoint, step " << provenance.value("step", int64_t{0}) << "\n\n";
  const std::string teacher = json_text(plan.value("teacher", nlohmann::json()));
  out << "Trained by prime-train " << json_text(provenance.value("prime_version", nlohmann::json())) << " from `"
      << model << "` (stage `" << json_text(plan.value("stage", nlohmann::json())) << "`"
      << (teacher.empty() ? std::string() : ", teacher `" + teacher + "`") << "): " << provenance.value("step", int64_t{0}) << " steps, " << provenance.value("tokens", int64_t{0})
      << " tokens.\n\n";
  out << "| | |\n|---|---|\n";
  const auto architectures = config.value("architectures", nlohmann::json::array());
  out << "| architecture | `" << config.value("model_type", "") << "` / `"
      << (architectures.empty() ? std::string() : json_text(architectures[0])) << "` |\n";
  if (!pattern.empty()) out << "| hybrid_override_pattern | `" << pattern << "` |\n";
  for (const char* key : {"stage", "teacher", "data", "train", "align_layers", "seq_len", "batch_tokens", "seed"})
    if (plan.contains(key) && !json_text(plan[key]).empty()) out << "| " << key << " | `" << json_text(plan[key]) << "` |\n";
  out << "\nProvenance is in `prime.json` and in the safetensors metadata; the run's command line and every "
         "option are in its `run.json`. `trainer_state.safetensors` and `trainer.json` hold what `prime-train "
         "--resume` needs and are not part of the model.\n";
  return out.str();
}

nlohmann::json TrainerCounters::to_json() const {
  return {{"step", step},           {"tokens", tokens},   {"data_position", data_position},
          {"bad_steps", bad_steps}, {"bad_in_row", bad_in_row}, {"rollbacks", rollbacks},
          {"lr_scale", lr_scale},   {"seed", seed}};
}

TrainerCounters TrainerCounters::from_json(const nlohmann::json& json, const std::string& where) {
  try {
    TrainerCounters counters;
    counters.step = json.at("step").get<int64_t>();
    counters.tokens = json.at("tokens").get<int64_t>();
    counters.data_position = json.at("data_position").get<int64_t>();
    counters.bad_steps = json.at("bad_steps").get<int64_t>();
    counters.bad_in_row = json.at("bad_in_row").get<int64_t>();
    counters.rollbacks = json.at("rollbacks").get<int64_t>();
    counters.lr_scale = json.at("lr_scale").get<double>();
    counters.seed = json.at("seed").get<uint64_t>();
    return counters;
  } catch (const nlohmann::json::exception& error) {
    throw user_error(where, ": bad trainer state: ", error.what());
  }
}

fs::path checkpoint_path(const fs::path& run_dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%06lld", static_cast<long long>(step));
  return run_dir / "checkpoints" / name;
}

std::vector<fs::path> list_checkpoints(const fs::path& run_dir) {
  std::vector<fs::path> found;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(run_dir / "checkpoints", error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step-", 0) == 0 && entry.is_directory()) found.push_back(entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

fs::path write_checkpoint(const fs::path& run_dir, const CheckpointContents& contents, int64_t keep) {
  const fs::path target = checkpoint_path(run_dir, contents.counters.step);
  fs::create_directories(target.parent_path());
  {
    io::AtomicDirectory staging(target, /*overwrite=*/true);
    io::WriterOptions writer_options;
    writer_options.metadata["prime"] = contents.provenance.dump();
    io::SafetensorsWriter model_writer(staging.staging(), writer_options);
    model::TensorMap master;
    for (const auto& [name, tensor] : *contents.weights) {
      const bool floating = at::isFloatingType(tensor.scalar_type());
      const at::ScalarType dtype = !floating                           ? tensor.scalar_type()
                                   : model::stays_fp32_tensor(name) ? at::kFloat
                                                                    : contents.save_dtype;
      if (tensor.requires_grad() && dtype != tensor.scalar_type()) master[name] = tensor;
      const at::Tensor value = tensor;
      model_writer.add(name, io::from_scalar_type(dtype), tensor.sizes().vec(),
                       [value, dtype] { return value.detach().to(at::kCPU, dtype).contiguous(); });
    }
    model_writer.write();

    model::TensorMap state = contents.optimizer->state();
    for (const auto& [name, tensor] : master) state["master." + name] = tensor.detach().cpu();
    io::save_tensor_file(staging.staging() / "trainer_state.safetensors", state);
    write_text(staging.staging() / "config.json", contents.config->raw.dump(2) + "\n");
    write_text(staging.staging() / "prime.json", contents.provenance.dump(2) + "\n");
    write_text(staging.staging() / "trainer.json", contents.counters.to_json().dump(2) + "\n");
    write_text(staging.staging() / "README.md",
               checkpoint_card(contents.config->raw, contents.provenance, contents.carry_from));
    for (const std::string& file : convert::carried_files())
      if (!contents.carry_from.empty() && fs::is_regular_file(contents.carry_from / file))
        fs::copy_file(contents.carry_from / file, staging.staging() / file);
    staging.commit();
  }
  point_final(run_dir, target);
  std::vector<fs::path> all = list_checkpoints(run_dir);
  for (size_t i = 0; keep > 0 && i + keep < all.size(); ++i) io::remove_tree(all[i]);
  return target;
}

LoadedTrainerState read_trainer_state(const fs::path& checkpoint) {
  LoadedTrainerState loaded;
  const fs::path json_path = checkpoint / "trainer.json";
  std::ifstream in(json_path);
  if (!in) throw user_error(json_path.string(), ": missing (not a prime-train checkpoint)");
  const auto json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) throw user_error(json_path.string(), ": not valid JSON");
  loaded.counters = TrainerCounters::from_json(json, json_path.string());
  const io::Checkpoint state = io::Checkpoint::open(checkpoint / "trainer_state.safetensors");
  for (const std::string& name : state.names()) {
    at::Tensor tensor = state.tensor(name).clone();
    if (name.rfind("master.", 0) == 0) loaded.master[name.substr(7)] = tensor;
    else loaded.optimizer[name] = tensor;
  }
  return loaded;
}

}  // namespace prime::train
