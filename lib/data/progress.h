// Progress of long work: done/total, rate and ETA, redrawn in place on a terminal and printed as
// plain lines (every 10% or 30 s) otherwise, so logs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace prime::data {

class ProgressMeter {
 public:
  // total 0: unknown (no percentage or ETA). unit_scale converts units for display (1e6 with
  // unit "MB" shows bytes as MB). tty: redraw in place; see stderr_is_tty().
  ProgressMeter(std::string label, uint64_t total, std::ostream& out, bool tty, std::string unit = "MB",
                double unit_scale = 1e6);
  void update(uint64_t done);
  // Prints the final line (always).
  void finish(const std::string& suffix = "");

  static bool stderr_is_tty();

 private:
  std::string line(uint64_t done) const;
  std::string label_;
  uint64_t total_;
  std::ostream& out_;
  bool tty_;
  std::string unit_;
  double scale_;
  std::chrono::steady_clock::time_point start_, last_print_;
  int last_decile_ = 0;
  uint64_t done_ = 0;
};

// "1.5 s", "3 min 20 s", "2 h 05 min".
std::string format_duration(double seconds);

}  // namespace prime::data
