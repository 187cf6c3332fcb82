#include "kernels/common/switches.h"

#include <cstdlib>
#include <sstream>

#include "util/error.h"

namespace prime::kernels::detail {

std::string switch_text(const char* variable) {
  const char* value = std::getenv(variable);
  return value ? value : "";
}

void bad_switch(const char* variable, const std::string& text,
                const std::vector<std::pair<const char*, const char*>>& values) {
  std::ostringstream listed;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) listed << (i + 1 == values.size() ? " or " : ", ");
    listed << '"' << values[i].first << "\" (" << values[i].second << (i == 0 ? ", the default)" : ")");
  }
  throw user_error(variable, "=", text, ": must be ", listed.str());
}

}  // namespace prime::kernels::detail
