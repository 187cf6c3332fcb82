#include "convert/in_memory.h"

#include "util/error.h"

namespace prime::convert {

std::optional<ConvertOptions> parse_convert_spec(const std::string& spec) {
  static const std::string marker = "+convert:";
  const size_t at = spec.find(marker);
  if (at == std::string::npos) return std::nullopt;
  ConvertOptions options;
  options.source = spec.substr(0, at);
  const std::string request = spec.substr(at + marker.size());
  if (request.rfind("pattern=", 0) == 0) {
    options.layers.pattern = request.substr(std::string("pattern=").size());
    return options;
  }
  const size_t colon = request.find(':');
  if (colon == std::string::npos || colon == 0)
    throw user_error("'", spec, "': expected SOURCE+convert:LAYER:A:S (e.g. +convert:GKA:1:3) or +convert:pattern=P");
  options.layers.layer = request.substr(0, colon);
  options.layers.ratio = request.substr(colon + 1);
  return options;
}

ConvertedModel convert_in_memory(const ConvertOptions& options) {
  ConversionPlan plan = plan_conversion(options);
  ConvertedModel converted{plan.source, plan.hybrid, {}};
  for (const auto& target : plan.targets) converted.weights[target.name] = target.make(*plan.weights);
  return converted;
}

}  // namespace prime::convert
