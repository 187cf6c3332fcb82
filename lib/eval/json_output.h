// Result files: JSON written atomically (temporary file + rename), so a reader never sees half.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace prime::eval {

// UserError when the file cannot be written.
void write_json_file(const std::string& path, const nlohmann::json& value);

}  // namespace prime::eval
