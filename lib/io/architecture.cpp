#include "io/architecture.h"

#include <cstdlib>
#include <fstream>
#include <mutex>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace prime::io {
namespace {

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (size_t pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos + to.size()))
    text.replace(pos, from.size(), to);
}

ArchitectureTemplate load_template(const std::filesystem::path& path) {
  std::ifstream in(path);
  nlohmann::json data;
  try {
    in >> data;
  } catch (const nlohmann::json::exception& e) {
    throw internal_error("architecture template ", path.string(), " is not valid JSON: ", e.what());
  }
  ArchitectureTemplate arch;
  arch.family = data.at("family").get<std::string>();
  arch.model_types = data.at("model_types").get<std::vector<std::string>>();
  arch.architectures = data.at("architectures").get<std::vector<std::string>>();
  arch.hybrid_model_type = data.value("hybrid_model_type", "hybrid_" + arch.family);
  arch.hybrid_architecture = data.at("hybrid_architecture").get<std::string>();
  arch.qk_norm = data.value("qk_norm", false);
  arch.attention_bias_default = data.value("attention_bias_default", false);
  arch.tensors = data.at("tensors").get<std::map<std::string, std::string>>();
  return arch;
}

}  // namespace

std::string ArchitectureTemplate::name(const std::string& key, int64_t layer, int64_t expert) const {
  auto found = tensors.find(key);
  if (found == tensors.end()) throw internal_error("architecture ", family, " has no tensor key '", key, "'");
  std::string result = found->second;
  replace_all(result, "{i}", std::to_string(layer));
  replace_all(result, "{e}", std::to_string(expert));
  return result;
}

std::filesystem::path templates_dir() {
  if (const char* env = std::getenv("PRIME_TEMPLATES"); env && *env) return env;
  return std::filesystem::path(PRIME_SOURCE_DIR) / "templates";
}

const std::vector<ArchitectureTemplate>& architecture_templates() {
  static std::once_flag once;
  static std::vector<ArchitectureTemplate> all;
  std::call_once(once, [] {
    const auto dir = templates_dir() / "architectures";
    if (!std::filesystem::is_directory(dir))
      throw user_error("architecture templates not found in ", dir.string(), " (set PRIME_TEMPLATES)");
    for (const auto& entry : std::filesystem::directory_iterator(dir))
      if (entry.path().extension() == ".json") all.push_back(load_template(entry.path()));
  });
  return all;
}

const ArchitectureTemplate& find_architecture(const std::string& model_type, const std::string& architecture,
                                              const std::string& where) {
  std::string supported;
  for (const auto& arch : architecture_templates()) {
    for (const auto& type : arch.model_types)
      if (type == model_type) return arch;
    if (model_type == arch.hybrid_model_type) return arch;
    if (model_type.empty())
      for (const auto& name : arch.architectures)
        if (name == architecture) return arch;
    supported += (supported.empty() ? "" : ", ") + arch.family;
  }
  throw user_error(where, ": unknown architecture (model_type '", model_type, "', architectures '",
                   architecture, "'); supported families: ", supported);
}

}  // namespace prime::io
