// The library's layers, as DESIGN.md orders them: util < io, tokenizer < model < convert, data,
// eval, train, ... A lower layer never includes a higher one, so the upper areas can grow side by
// side without pulling each other into the model code (a cycle is how that starts).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

// The areas each lower layer may include (its own included). Areas not listed here are upper
// layers, free to include each other and everything below.
const std::map<std::string, std::set<std::string>>& lower_layers() {
  static const std::map<std::string, std::set<std::string>> allowed = {
      {"util", {"util"}},
      {"io", {"util", "io"}},
      {"tokenizer", {"util", "io", "tokenizer"}},
      {"model", {"util", "io", "model", "kernels"}},
      {"kernels", {"util", "kernels"}},  // the top-level kernels/ folder, below lib/model
  };
  return allowed;
}

// "file:line includes area/..." for each project include in `text` that `area` may not include.
std::vector<std::string> layer_violations(const std::string& area, const std::string& file, const std::string& text) {
  std::vector<std::string> found;
  const auto rule = lower_layers().find(area);
  if (rule == lower_layers().end()) return found;
  static const std::regex include_line(R"(^\s*#\s*include\s*"([A-Za-z0-9_]+)/)");
  std::istringstream lines(text);
  std::string line;
  for (int line_number = 1; std::getline(lines, line); ++line_number) {
    std::smatch match;
    if (std::regex_search(line, match, include_line) && !rule->second.count(match[1].str()))
      found.push_back(file + ":" + std::to_string(line_number) + " includes " + match[1].str() + "/");
  }
  return found;
}

}  // namespace

TEST_CASE("layering check catches an include of a higher layer", "[layout]") {
  CHECK(layer_violations("model", "lib/model/x.cpp", "#include \"model/rope.h\"\n#include \"io/source.h\"\n").empty());
  const auto found = layer_violations("model", "lib/model/x.cpp", "// a\n#include \"convert/in_memory.h\"\n");
  REQUIRE(found.size() == 1);
  CHECK(found[0] == "lib/model/x.cpp:2 includes convert/");
  CHECK(layer_violations("io", "lib/io/x.h", "  #  include \"eval/generate.h\"").size() == 1);
  CHECK(layer_violations("io", "lib/io/x.h", "#include \"model/weights.h\"").size() == 1);
  CHECK(layer_violations("tokenizer", "lib/tokenizer/x.h", "#include \"data/pack.h\"").size() == 1);
  CHECK(layer_violations("convert", "lib/convert/x.cpp", "#include \"eval/generate.h\"").empty());
  CHECK(layer_violations("model", "lib/model/x.cpp", "#include <convert/in_memory.h>").empty());  // not ours
  CHECK(layer_violations("kernels", "kernels/x/x.cu", "#include \"model/gdn.h\"").size() == 1);
}

TEST_CASE("lib/util, lib/io, lib/tokenizer, lib/model and kernels/ include no higher layer", "[layout]") {
  const std::filesystem::path lib = std::filesystem::path(PRIME_SOURCE_DIR) / "lib";
  REQUIRE(std::filesystem::is_directory(lib / "model"));
  std::vector<std::string> violations;
  size_t files_checked = 0;
  for (const auto& rule : lower_layers()) {
    const std::string& area = rule.first;
    const std::filesystem::path root = area == "kernels" ? lib.parent_path() / area : lib / area;
    if (!std::filesystem::is_directory(root)) continue;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
      const std::string extension = entry.path().extension().string();
      if (!entry.is_regular_file() || (extension != ".h" && extension != ".cpp" && extension != ".cu" &&
                                       extension != ".cuh"))
        continue;
      std::ifstream in(entry.path());
      std::stringstream text;
      text << in.rdbuf();
      const auto found =
          layer_violations(area, std::filesystem::relative(entry.path(), lib.parent_path()).string(), text.str());
      violations.insert(violations.end(), found.begin(), found.end());
      ++files_checked;
    }
  }
  CHECK(files_checked > 20);
  for (const auto& violation : violations) UNSCOPED_INFO(violation);
  CHECK(violations.empty());
}
