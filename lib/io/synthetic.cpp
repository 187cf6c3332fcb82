#include "io/synthetic.h"

#include <ATen/CPUGeneratorImpl.h>

#include <map>
#include <sstream>

#include "io/source.h"
#include "util/error.h"

namespace prime::io {
namespace {

uint64_t fnv1a(const std::string& text, uint64_t seed) {
  uint64_t hash = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

uint64_t apply_synthetic_overrides(nlohmann::json& config, const std::string& overrides, const std::string& spec) {
  static const std::map<std::string, std::string> keys = {
      {"layers", "num_hidden_layers"},     {"hidden", "hidden_size"},
      {"heads", "num_attention_heads"},    {"kv_heads", "num_key_value_heads"},
      {"head_dim", "head_dim"},            {"intermediate", "intermediate_size"},
      {"vocab", "vocab_size"},             {"experts", "num_experts"},
      {"experts_per_tok", "num_experts_per_tok"}, {"moe_intermediate", "moe_intermediate_size"},
      {"window", "sliding_window"},        {"max_positions", "max_position_embeddings"}};
  uint64_t seed = 0;
  std::stringstream items(overrides);
  std::string item;
  while (std::getline(items, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    if (eq == std::string::npos) throw user_error(spec, ": expected key=value, got '", item, "'");
    const std::string key = item.substr(0, eq), text = item.substr(eq + 1);
    int64_t value = 0;
    try {
      size_t used = 0;
      value = std::stoll(text, &used);
      if (used != text.size()) throw std::invalid_argument(text);
    } catch (const std::exception&) {
      throw user_error(spec, ": value of '", key, "' must be an integer, got '", text, "'");
    }
    if (key == "seed") {
      seed = static_cast<uint64_t>(value);
      continue;
    }
    auto found = keys.find(key);
    if (found == keys.end()) {
      std::string known = "seed";
      for (const auto& [name, field] : keys) known += ", " + name;
      throw user_error(spec, ": unknown synthetic override '", key, "' (known: ", known, ")");
    }
    if (value <= 0) throw user_error(spec, ": '", key, "' must be > 0");
    config[found->second] = value;
    if (key == "layers") {
      // Keep per-layer lists consistent with the new depth.
      if (config.contains("layer_types") && config["layer_types"].is_array()) {
        auto types = config["layer_types"];
        nlohmann::json resized = nlohmann::json::array();
        for (int64_t i = 0; i < value; ++i) resized.push_back(types.empty() ? "full_attention" : types[std::min<size_t>(i, types.size() - 1)]);
        config["layer_types"] = resized;
      }
      if (config.contains("max_window_layers")) config["max_window_layers"] = value;
    }
  }
  return seed;
}

at::Tensor synthetic_tensor(const std::string& name, const std::vector<int64_t>& shape, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(fnv1a(name, seed));
  at::Tensor noise = at::normal(0.0, 0.02, shape, generator, at::TensorOptions().dtype(at::kFloat));
  const bool is_norm = ends_with(name, "norm.weight");
  return is_norm ? noise + 1.0 : noise;
}

std::map<std::string, at::Tensor> synthetic_weights(const std::vector<TensorSpec>& specs, uint64_t seed) {
  std::map<std::string, at::Tensor> weights;
  for (const auto& spec : specs) weights[spec.name] = synthetic_tensor(spec.name, spec.shape, seed);
  return weights;
}

}  // namespace prime::io
