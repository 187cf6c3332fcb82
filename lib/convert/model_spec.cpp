#include "convert/model_spec.h"

#include <memory>

#include "convert/in_memory.h"

namespace prime::convert {

SpecWeights load_spec_weights(const std::string& spec, const model::LoadOptions& options) {
  SpecWeights loaded;
  if (auto request = parse_convert_spec(spec)) {
    ConvertedModel converted = convert_in_memory(*request);
    loaded.source = converted.source;
    loaded.config = converted.config;
    loaded.weights = model::prepare_weights(converted.weights, options);
  } else {
    loaded.source = io::resolve_source(spec);
    loaded.config = loaded.source.config;
    loaded.weights = model::prepare_weights(io::load_source_weights(loaded.source), options);
  }
  loaded.source.config = loaded.config;
  return loaded;
}

model::LoadedModel load_model_spec(const std::string& spec, const model::LoadOptions& options) {
  if (!parse_convert_spec(spec)) return model::load_model(spec, options);
  SpecWeights loaded = load_spec_weights(spec, options);
  model::LoadedModel model_loaded;
  model_loaded.source = std::move(loaded.source);
  model_loaded.model = std::make_unique<model::HybridModel>(loaded.config, loaded.weights);
  return model_loaded;
}

}  // namespace prime::convert
