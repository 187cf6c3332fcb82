// Result files: JSON written atomically (io/atomic_dir.h), so a reader never sees half.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace prime::eval {

// UserError naming `flag` when the file exists and !force, or cannot be written.
void write_json_file(const std::string& path, const nlohmann::json& value, bool force, const std::string& flag);

}  // namespace prime::eval
