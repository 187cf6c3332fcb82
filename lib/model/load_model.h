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

// spec: a source (directory, alias, synthetic:...), or SOURCE+convert:LAYER:A:S (or
// SOURCE+convert:pattern=P) for the hybrid prime-convert would make of it, built in memory.
LoadedModel load_model(const std::string& spec, const LoadOptions& options);

}  // namespace prime::model
