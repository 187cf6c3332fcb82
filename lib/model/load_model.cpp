#include "model/load_model.h"

namespace prime::model {

LoadedModel load_model(const std::string& spec, const LoadOptions& options) {
  LoadedModel loaded;
  loaded.source = io::resolve_source(spec);
  TensorMap weights = prepare_weights(io::load_source_weights(loaded.source), options);
  loaded.model = std::make_unique<HybridModel>(loaded.source.config, weights);
  return loaded;
}

}  // namespace prime::model
