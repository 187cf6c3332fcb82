// One call from a --model/--source string to a ready HybridModel.
#pragma once

#include <memory>
#include <string>

#include "io/source.h"
#include "model/hybrid_model.h"

namespace prime::model {

struct LoadedModel {
  io::Source source;
  std::unique_ptr<HybridModel> model;
};

// spec: a source (directory, alias, synthetic:...). Specs that convert in memory
// (SOURCE+convert:...) are resolved above lib/convert: convert::load_model_spec.
LoadedModel load_model(const std::string& spec, const LoadOptions& options);

}  // namespace prime::model
