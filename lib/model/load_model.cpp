#include "model/load_model.h"

#include "convert/in_memory.h"

namespace prime::model {

LoadedModel load_model(const std::string& spec, const LoadOptions& options) {
  LoadedModel loaded;
  if (auto request = convert::parse_convert_spec(spec)) {
    convert::ConvertedModel converted = convert::convert_in_memory(*request);
    loaded.source = converted.source;
    loaded.source.config = converted.config;
    TensorMap weights = prepare_weights(converted.weights, options);
    converted.weights.clear();  // the device copies are all we keep
    loaded.model = std::make_unique<HybridModel>(converted.config, weights);
    return loaded;
  }
  loaded.source = io::resolve_source(spec);
  TensorMap weights = prepare_weights(io::load_source_weights(loaded.source), options);
  loaded.model = std::make_unique<HybridModel>(loaded.source.config, weights);
  return loaded;
}

}  // namespace prime::model
