#include "util/metrics.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>

#include "util/error.h"

namespace prime {

JsonlMetrics::JsonlMetrics(std::string path, int64_t resume_step) : path_(std::move(path)) {
  if (resume_step >= 0) {
    std::ifstream in(path_);
    std::ostringstream kept;
    std::string line;
    while (std::getline(in, line)) {
      // A killed run can leave a torn last line: keep only whole records of earlier steps.
      const auto parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!parsed.is_object() || !parsed.contains("step") || !parsed["step"].is_number_integer() ||
          parsed["step"].get<int64_t>() >= resume_step)
        continue;
      kept << line << '\n';
    }
    in.close();
    std::ofstream rewrite(path_, std::ios::trunc);
    rewrite << kept.str();
    if (!rewrite) throw user_error("cannot write metrics file ", path_);
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
