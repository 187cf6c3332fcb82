// Converting without writing: "SOURCE+convert:LAYER:A:S" model specs build the hybrid that
// prime-convert would write (same plan, same init, same seeds) straight into memory, so
// prime-eval and the benchmarks can run hybrids of any source, synthetic 8B shapes included.
#pragma once

#include <optional>
#include <string>

#include "convert/conversion_plan.h"
#include "model/weights.h"

namespace prime::convert {

// "qwen3-8b+convert:GKA:1:3" -> ConvertOptions{source "qwen3-8b", layer GKA, ratio 1:3, uniform
// placement, hmf init}; "SRC+convert:pattern=GDN-*-GDN-*" gives an explicit pattern. nullopt when
// the spec has no "+convert:" part; UserError when that part is malformed.
std::optional<ConvertOptions> parse_convert_spec(const std::string& spec);

struct ConvertedModel {
  io::Source source;       // the source as resolved
  io::ModelConfig config;  // the hybrid's config, as its loaders parse it
  model::TensorMap weights;
};

// Every output tensor of the plan, made in memory (in the plan's dtypes).
ConvertedModel convert_in_memory(const ConvertOptions& options);

}  // namespace prime::convert
