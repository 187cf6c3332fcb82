// What a converted checkpoint says about itself: prime.json (provenance: source id and revision,
// plan, scores, init recipe, prime version, command line), the same provenance in each shard's
// __metadata__, and README.md (a model card with the plan table). No timestamps or host names:
// the same inputs and command line give byte-identical files.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "convert/conversion_plan.h"

namespace prime::convert {

nlohmann::json provenance_json(const ConversionPlan& plan, const std::string& command_line);

// __metadata__ of every shard: "format": "pt" and "prime": the provenance, compact.
std::map<std::string, std::string> shard_metadata(const ConversionPlan& plan, const std::string& command_line);

std::string model_card(const ConversionPlan& plan, const std::string& command_line);

// The "license:" front-matter value ("apache-2.0") of the model card (README.md) in `dir`, or "".
std::string card_license(const std::filesystem::path& dir);

// Files copied unchanged from a source directory when present (tokenizer, generation config).
const std::vector<std::string>& carried_files();

}  // namespace prime::convert
