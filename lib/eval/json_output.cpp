#include "eval/json_output.h"

#include "io/atomic_dir.h"

namespace prime::eval {

void write_json_file(const std::string& path, const nlohmann::json& value, bool force, const std::string& flag) {
  io::write_file_atomically(path, value.dump(2) + "\n", force, flag);
}

}  // namespace prime::eval
