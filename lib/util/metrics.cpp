#include "util/metrics.h"

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>

#include "util/error.h"

namespace prime {

JsonlMetrics::JsonlMetrics(std::string path, int64_t resume_step) : path_(std::move(path)) {
  if (resume_step >= 0) {
    // Lines come in step order: the records kept are a prefix of the file, and cutting the file at
    // the prefix's end (one truncate) cannot lose it to a kill, as rewriting the file could.
    std::ifstream in(path_, std::ios::binary);
    std::string line;
    std::streamoff kept_bytes = 0;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // a killed run can leave a torn last line, without its newline
      const auto parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!parsed.is_object() || !parsed.contains("step") || !parsed["step"].is_number_integer() ||
          parsed["step"].get<int64_t>() >= resume_step)
        break;
      kept_bytes += static_cast<std::streamoff>(line.size()) + 1;
    }
    in.close();
    if (::truncate(path_.c_str(), kept_bytes) != 0 && errno != ENOENT)
      throw user_error("cannot cut metrics file ", path_, " back to step ", resume_step, ": ", std::strerror(errno));
  }
  out_.open(path_, std::ios::app);
  if (!out_) throw user_error("cannot open metrics file ", path_, " for writing");
}

void JsonlMetrics::write(const MetricRecord& record) {
  nlohmann::json line;
  line["kind"] = record.kind;
  line["step"] = record.step;
  for (const auto& [key, value] : record.values) line[key] = std::isfinite(value) ? nlohmann::json(value) : nlohmann::json();
  for (const auto& [key, value] : record.labels) line[key] = value;
  out_ << line.dump() << '\n';
  // Batched: a line per step costs nothing measurable, a flush per step would.
  if (++pending_ >= 16) flush();
}

void JsonlMetrics::flush() {
  out_.flush();
  pending_ = 0;
  if (!out_) throw user_error("writing metrics file ", path_, " failed");
}

}  // namespace prime
