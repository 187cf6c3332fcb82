#include "convert/model_card.h"

#include <filesystem>
#include <fstream>

#include <algorithm>
#include <sstream>

#include "convert/conversion_plan.h"

namespace prime::convert {
namespace {

std::string source_name(const ConversionPlan& plan) {
  if (!plan.source.hf_id.empty()) return plan.source.hf_id.substr(plan.source.hf_id.find('/') + 1);
  if (!plan.source.dir.empty()) return plan.source.dir.filename().string();
  return plan.source.spec;
}

std::string layer_recipe(const ConversionPlan& plan, int64_t layer) {
  const std::string& symbol = plan.layers.types[layer];
  if (symbol == "*") return "attention, unchanged";
  if (symbol == "SWA") return "attention weights unchanged, window " + std::to_string(plan.swa_window);
  if (plan.init == InitRecipe::Random) return "random (no transfer)";
  std::string gate;
  for (size_t i = 0; i < plan.targets.size(); ++i)
    if (plan.target_layers[i] == layer && (plan.targets[i].name.find("g_proj") != std::string::npos ||
                                           plan.targets[i].name.find("in_proj") != std::string::npos))
      gate = plan.targets[i].how;
  return "from attention layer " + std::to_string(layer) + (gate.empty() ? "" : "; " + gate);
}

// License files carried over from the source, as named in the output.
std::vector<std::string> license_files(const io::Source& source) {
  std::vector<std::string> found;
  if (source.dir.empty()) return found;
  for (const char* name : {"LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE"})
    if (std::filesystem::exists(source.dir / name)) found.push_back(name);
  return found;
}

}  // namespace

std::string card_license(const std::filesystem::path& dir) {
  if (dir.empty()) return "";
  std::ifstream in(dir / "README.md");
  std::string line;
  if (!std::getline(in, line) || line != "---") return "";
  while (std::getline(in, line) && line != "---")
    if (line.rfind("license:", 0) == 0) {
      std::string value = line.substr(8);
      value.erase(0, value.find_first_not_of(" \t\"'"));
      value.erase(value.find_last_not_of(" \t\r\"'") + 1);
      return value;
    }
  return "";
}

const std::vector<std::string>& carried_files() {
  static const std::vector<std::string> files = {
      "tokenizer.json",    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
      "vocab.json",        "merges.txt",            "tokenizer.model",         "chat_template.jinja",
      "chat_template.json", "generation_config.json", "LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE"};
  return files;
}

nlohmann::json provenance_json(const ConversionPlan& plan, const std::string& command_line) {
  const io::Source& source = plan.source;
  nlohmann::json src = {{"spec", source.spec},
                        {"kind", source.kind},
                        {"model_type", source.config.model_type},
                        {"architecture", source.config.architecture},
                        {"num_hidden_layers", source.config.num_hidden_layers}};
  if (!source.hf_id.empty()) src["hf_id"] = source.hf_id;
  if (!source.revision.empty()) src["revision"] = source.revision;
  if (!source.alias.empty()) src["alias"] = source.alias;
  if (!source.dir.empty()) src["dir"] = source.dir.string();
  if (source.kind == "synthetic") src["seed"] = source.seed;

  nlohmann::json layers = {{"method", plan.layers.method},
                           {"pattern", plan.layers.pattern()},
                           {"layer_types", plan.layers.types},
                           {"attention_layers", plan.layers.attention_layers()}};
  if (!plan.layers.target.empty()) layers["target"] = plan.layers.target;
  if (plan.layers.ratio) {
    layers["ratio"] = plan.layers.ratio->text();
    layers["rounding"] = "n_attn = round(L*A/(A+S)), an exact half rounds up, at least 1 when A > 0";
  }
  nlohmann::json scores = nullptr;
  if (plan.layers.scores) {
    const LayerScores& s = *plan.layers.scores;
    scores = {{"path", s.path}, {"format", s.format}, {"columns", s.columns}, {"values", s.scores},
              {"rule", "higher = safer to replace; the lowest-scoring layers stay attention"}};
    if (s.baseline) scores["baseline"] = *s.baseline;
  }
  nlohmann::json provenance = {
      {"tool", "prime-convert"},
      {"prime_version", PRIME_VERSION},
      {"command", command_line},
      {"source", src},
      {"plan", layers},
      {"scores", scores},
      {"init", {{"recipe", init_recipe_name(plan.init)}, {"seed", plan.seed},
                {"description", init_recipe_description(plan.init)}}},
      {"dtype", plan.dtype ? dtype_short_name(*plan.dtype) : std::string("source")},
      {"output", {{"tensors", plan.targets.size()}, {"bytes", plan.output_bytes}, {"shards", plan.shard_count}}}};
  if (plan.layers.count("SWA") > 0) provenance["swa_window"] = plan.swa_window;
  return provenance;
}

std::map<std::string, std::string> shard_metadata(const ConversionPlan& plan, const std::string& command_line) {
  return {{"format", "pt"}, {"prime", provenance_json(plan, command_line).dump()}};
}

std::string model_card(const ConversionPlan& plan, const std::string& command_line) {
  const io::Source& source = plan.source;
  const std::string name = source_name(plan);
  std::ostringstream out;
  out << "---\n";
  if (!source.hf_id.empty()) out << "base_model: " << source.hf_id << "\n";
  const std::string license = card_license(source.dir);
  if (!license.empty()) out << "license: " << license << "\n";
  out << "library_name: transformers\ntags:\n- prime\n- hybrid\n";
  std::vector<std::string> tagged;
  for (const auto& symbol : plan.layers.types)
    if (symbol != "*" && std::find(tagged.begin(), tagged.end(), symbol) == tagged.end()) {
      tagged.push_back(symbol);
      out << "- " << (symbol == "M2" ? std::string("mamba2") : symbol) << "\n";
    }
  out << "---\n\n";
  out << "# " << name << " hybrid: " << plan.plan_target_line().substr(plan.plan_target_line().find(": ") + 2) << "\n\n";
  out << "Converted by prime-convert " << PRIME_VERSION << " from `" << source.spec << "`";
  if (!source.hf_id.empty()) out << " (" << source.hf_id << (source.revision.empty() ? "" : " @ " + source.revision) << ")";
  if (source.kind == "synthetic") out << " (synthetic random weights, seed " << source.seed << ")";
  out << ". This is a primed initialisation: its SSM layers are seeded from the attention layers they "
         "replace and need distillation from the source model before the model is useful.\n\n";
  out << "| | |\n|---|---|\n";
  out << "| architecture | `" << plan.config.value("model_type", "") << "` / `"
      << plan.config["architectures"][0].get<std::string>() << "` |\n";
  out << "| layers | " << plan.plan_target_line().substr(plan.plan_target_line().find(": ") + 2) << " |\n";
  out << "| hybrid_override_pattern | `" << plan.layers.pattern() << "` |\n";
  if (plan.layers.scores)
    out << "| layer scores | `" << plan.layers.scores->path << "` (" << plan.layers.scores->format
        << "; higher = safer to replace, the lowest-scoring layers stay attention) |\n";
  out << "| init | `" << init_recipe_name(plan.init) << "`, seed " << plan.seed << ": " << init_recipe_description(plan.init)
      << " |\n";
  out << "| dtype | " << (plan.dtype ? dtype_short_name(*plan.dtype) : std::string("as the source"))
      << " (A_log, dt_bias, D in fp32) |\n";
  out << "| size | " << plan.targets.size() << " tensors, " << format_bytes(plan.output_bytes) << " in "
      << plan.shard_count << " shard(s) |\n\n";
  out << "## Layers\n\n| layer | type | initialisation |\n|---|---|---|\n";
  for (size_t layer = 0; layer < plan.layers.types.size(); ++layer) {
    const std::string& symbol = plan.layers.types[layer];
    out << "| " << layer << " | " << (symbol == "*" ? "attention" : symbol) << " | "
        << layer_recipe(plan, static_cast<int64_t>(layer)) << " |\n";
  }
  out << "\n## Reproduce\n\n```\n" << command_line << "\n```\n\n";
  out << "Provenance (source revision, plan, scores, recipe, prime version) is in `prime.json` and in each "
         "shard's safetensors metadata.\n\n";
  const auto licenses = license_files(source);
  out << "## License\n\n";
  if (!licenses.empty()) {
    out << "The source model's terms apply to these weights, which derive from it: see";
    for (size_t i = 0; i < licenses.size(); ++i) out << (i ? ", " : " ") << "`" << licenses[i] << "`";
    out << " (copied from the source)" << (license.empty() ? "" : " and the `license: " + license + "` above") << ".\n\n";
  } else if (!license.empty()) {
    out << "The source model's license (`" << license << "`) applies to these weights, which derive from it.\n\n";
  } else {
    out << "The source ships no license file; its terms, wherever they are stated, apply to these weights.\n\n";
  }
  out << "## Use\n\n```\nprime-eval --model <this directory> --token-ids 1,2,3 --generate 16\n```\n\n"
         "config.json follows Hybrid Model Factory's layout (`hybrid_override_pattern`, `layer_types`, "
         "per-type sub-configs; SSM tensors under `gka.`, `gdn.`, `mamba.`, `swa.`).\n";
  return out.str();
}

}  // namespace prime::convert
