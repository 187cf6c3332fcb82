// The one interface every measured figure goes through: a trainer's step lines, evaluations and
// benchmarks write records; a JSONL file implements it here, the experiment store elsewhere.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace prime {

struct MetricRecord {
  std::string kind;  // "step", "eval", ...
  int64_t step = 0;
  std::map<std::string, double> values;  // NaN/inf are written as null
  std::map<std::string, std::string> labels;
};

class MetricsSink {
 public:
  virtual ~MetricsSink() = default;
  virtual void write(const MetricRecord& record) = 0;
  // Makes what was written durable (records may be batched until then).
  virtual void flush() {}
};

// One JSON object per line: {"kind":..., "step":..., <values>, <labels>}. Appends to the file
// (a resumed run continues it), cut back first to before the first line of a step at or after
// `resume_step` (or a torn line), so a run killed after logging steps it never checkpointed does
// not log them twice.
class JsonlMetrics : public MetricsSink {
 public:
  explicit JsonlMetrics(std::string path, int64_t resume_step = -1);
  void write(const MetricRecord& record) override;
  void flush() override;

 private:
  std::string path_;
  std::ofstream out_;
  int pending_ = 0;
};

// Writes to every sink.
class MetricsFanout : public MetricsSink {
 public:
  void add(std::unique_ptr<MetricsSink> sink) { sinks_.push_back(std::move(sink)); }
  void write(const MetricRecord& record) override {
    for (auto& sink : sinks_) sink->write(record);
  }
  void flush() override {
    for (auto& sink : sinks_) sink->flush();
  }

 private:
  std::vector<std::unique_ptr<MetricsSink>> sinks_;
};

}  // namespace prime
