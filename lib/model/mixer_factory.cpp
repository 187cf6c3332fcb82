// Maps a layer's pattern symbol to its mixer, with the layer's weights and sub-config.
#include "io/architecture.h"
#include "model/attention.h"
#include "model/gdn.h"
#include "model/gka.h"
#include "model/mamba2.h"
#include "model/hybrid_model.h"
#include "model/ssm_config_json.h"
#include "util/error.h"

namespace prime::model {

namespace {

// swa_config {window_size, num_sink_tokens}: strict like the SSM sub-configs.
AttentionOptions swa_options(const nlohmann::json& sub, const std::string& where) {
  namespace cj = config_json;
  const std::string what = cj::describe(where, "swa_config");
  cj::require_object(sub, what);
  cj::refuse_unknown(sub, what, {"window_size", "num_sink_tokens"});
  AttentionOptions options;
  options.symbol = "SWA";
  options.window = cj::get_int(sub, what, "window_size", 2048);
  options.sink_tokens = cj::get_int(sub, what, "num_sink_tokens", 0);
  if (options.window <= 0)
    throw cj::option_error(what, "window_size", "must be > 0, got ", options.window);
  if (options.sink_tokens < 0)
    throw cj::option_error(what, "num_sink_tokens", "must be >= 0, got ", options.sink_tokens);
  return options;
}

}  // namespace

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
  // Every sub-config is read through config_json's typed accessors; guarded() turns anything
  // the JSON library still throws into a UserError naming the sub-config.
  if (symbol == "SWA") {
    const nlohmann::json sub = config.raw.value("swa_config", nlohmann::json::object());
    const AttentionOptions options = config_json::guarded(
        config_json::describe(where, "swa_config"), [&] { return swa_options(sub, where); });
    return std::make_unique<AttentionMixer>(config, weights, layer_prefix + "swa.", options, rope);
  }
  // SSM layers read their own sub-config (formats.md) and weights under their own prefix. The
  // structural fields of a sub-config come from the base config (absent ones are derived).
  auto sub_config = [&](const char* key) -> const nlohmann::json& {
    auto found = config.raw.find(key);
    if (found == config.raw.end() || !found->is_object())
      throw user_error(where, ": config.json has no ", key, " object for this layer type");
    return *found;
  };
  if (symbol == "GKA") {
    GkaConfig sub = config_json::guarded(config_json::describe(where, "gka_config"), [&] {
      return GkaConfig::from_json(sub_config("gka_config"), where, &config);
    });
    return std::make_unique<GkaMixer>(std::move(sub), weights, layer_prefix + "gka.");
  }
  if (symbol == "GDN") {
    const GdnConfig sub = config_json::guarded(config_json::describe(where, "gdn_config"), [&] {
      return GdnConfig::from_json(sub_config("gdn_config"), where, &config);
    });
    return std::make_unique<GdnMixer>(sub, weights, layer_prefix + "gdn.");
  }
  if (symbol == "M2") {
    const Mamba2Config sub = config_json::guarded(config_json::describe(where, "mamba2_config"), [&] {
      return Mamba2Config::from_json(sub_config("mamba2_config"), where, &config);
    });
    return std::make_unique<Mamba2Mixer>(sub, weights, layer_prefix + "mamba.");
  }
  throw user_error(where, ": layer type ", symbol, " is not available in this build");
}

}  // namespace prime::model
