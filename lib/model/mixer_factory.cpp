// Maps a layer's pattern symbol to its mixer, with the layer's weights and sub-config.
#include "io/architecture.h"
#include "model/attention.h"
#include "model/gdn.h"
#include "model/gka.h"
#include "model/mamba2.h"
#include "model/hybrid_model.h"
#include "util/error.h"

namespace prime::model {

std::unique_ptr<Mixer> make_mixer(const io::ModelConfig& config, const TensorMap& weights, int64_t layer,
                                  std::shared_ptr<const Rope> rope) {
  const auto& arch = io::find_architecture(config.model_type, config.architecture, config.model_type);
  const std::string& symbol = config.layer_pattern.at(layer);
  const std::string layer_prefix = arch.name("layer_prefix", layer);
  const std::string where = "layer " + std::to_string(layer) + " (" + symbol + ")";
  if (symbol == "*") {
    AttentionOptions options;
    options.window = config.attention_window.at(layer);
    return std::make_unique<AttentionMixer>(config, weights, arch.name("attention_prefix", layer), options, rope);
  }
  if (symbol == "SWA") {
    const auto& sub = config.raw.value("swa_config", nlohmann::json::object());
    AttentionOptions options;
    options.symbol = "SWA";
    options.window = sub.value("window_size", int64_t{2048});
    options.sink_tokens = sub.value("num_sink_tokens", int64_t{0});
    if (options.window <= 0) throw user_error(where, ": swa_config.window_size must be > 0");
    return std::make_unique<AttentionMixer>(config, weights, layer_prefix + "swa.", options, rope);
  }
  // SSM layers read their own sub-config (formats.md) and weights under their own prefix.
  auto sub_config = [&](const char* key) -> const nlohmann::json& {
    auto found = config.raw.find(key);
    if (found == config.raw.end() || !found->is_object())
      throw user_error(where, ": config.json has no ", key, " for this layer type");
    return *found;
  };
  if (symbol == "GKA")
    return std::make_unique<GkaMixer>(GkaConfig::from_json(sub_config("gka_config"), where), weights,
                                      layer_prefix + "gka.");
  if (symbol == "GDN")
    return std::make_unique<GdnMixer>(GdnConfig::from_json(sub_config("gdn_config"), where), weights,
                                      layer_prefix + "gdn.");
  if (symbol == "M2")
    return std::make_unique<Mamba2Mixer>(Mamba2Config::from_json(sub_config("mamba2_config"), where), weights,
                                         layer_prefix + "mamba.");
  throw user_error(where, ": layer type ", symbol, " is not available in this build");
}

}  // namespace prime::model
