// Model specs, as --model takes them: a source (directory, alias, synthetic:...), or
// SOURCE+convert:LAYER:A:S / SOURCE+convert:pattern=P for the hybrid prime-convert would make of
// it, built in memory. Resolved here rather than in lib/model because the conversion code sits
// above the model code: lib/model loads sources only and never includes lib/convert.
#pragma once

#include <string>

#include "io/model_config.h"
#include "io/source.h"
#include "model/hybrid_model.h"
#include "model/load_model.h"

namespace prime::convert {

// A spec's weights, ready for a HybridModel (cast and placed by prepare_weights), with the config
// they follow: the source's own, or the hybrid's for a +convert: spec.
struct SpecWeights {
  io::Source source;  // the source as resolved (its config is `config`)
  io::ModelConfig config;
  model::TensorMap weights;
};

SpecWeights load_spec_weights(const std::string& spec, const model::LoadOptions& options);

// The model a spec names (model::load_model for plain sources; converted in memory otherwise).
model::LoadedModel load_model_spec(const std::string& spec, const model::LoadOptions& options);

}  // namespace prime::convert
