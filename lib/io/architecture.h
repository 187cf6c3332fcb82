// Architecture families as data: templates/architectures/<family>.json says which model_type and
// architectures strings belong to a family, which optional pieces it has (q/k norm, biases) and
// how its tensors are named. Adding a family with the same math = adding one JSON file.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace prime::io {

struct ArchitectureTemplate {
  std::string family;
  std::vector<std::string> model_types;
  std::vector<std::string> architectures;
  std::string hybrid_model_type;    // "hybrid_qwen3"
  std::string hybrid_architecture;  // "HybridQwen3ForCausalLM"
  bool qk_norm = false;
  bool attention_bias_default = false;
  // Logical name -> tensor name pattern with {i} (layer) and {e} (expert) placeholders.
  std::map<std::string, std::string> tensors;

  // The tensor name of `key` for layer `layer` (and expert `expert`); UserError if unknown key.
  std::string name(const std::string& key, int64_t layer = -1, int64_t expert = -1) const;
};

// Directory of templates/: $PRIME_TEMPLATES, else the source tree's templates/.
std::filesystem::path templates_dir();

// All families found in templates/architectures (loaded once).
const std::vector<ArchitectureTemplate>& architecture_templates();

// The family whose model_types (incl. hybrid_model_type) or architectures match; UserError
// ("unknown architecture ...") listing the supported ones otherwise.
const ArchitectureTemplate& find_architecture(const std::string& model_type, const std::string& architecture,
                                              const std::string& where);

}  // namespace prime::io
