#include "eval/json_output.h"

#include <cstdio>
#include <fstream>

#include <unistd.h>

#include "util/error.h"

namespace prime::eval {

void write_json_file(const std::string& path, const nlohmann::json& value) {
  const std::string temp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) throw user_error("cannot write ", path);
    out << value.dump(2) << "\n";
    out.close();
    if (!out) {
      std::remove(temp.c_str());
      throw user_error("cannot write ", path);
    }
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    std::remove(temp.c_str());
    throw user_error("cannot move ", temp, " to ", path);
  }
}

}  // namespace prime::eval
