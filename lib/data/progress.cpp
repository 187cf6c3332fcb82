#include "data/progress.h"

#include <algorithm>
#include <cstdio>

#include <unistd.h>

namespace prime::data {

ProgressMeter::ProgressMeter(std::string label, uint64_t total, std::ostream& out, bool tty, std::string unit,
                             double unit_scale)
    : label_(std::move(label)), total_(total), out_(out), tty_(tty), unit_(std::move(unit)), scale_(unit_scale) {
  start_ = last_print_ = std::chrono::steady_clock::now();
}

bool ProgressMeter::stderr_is_tty() { return ::isatty(STDERR_FILENO) == 1; }

std::string format_duration(double seconds) {
  char text[64];
  if (seconds < 60) std::snprintf(text, sizeof(text), "%.1f s", seconds);
  else if (seconds < 3600) std::snprintf(text, sizeof(text), "%d min %02d s", int(seconds) / 60, int(seconds) % 60);
  else std::snprintf(text, sizeof(text), "%d h %02d min", int(seconds) / 3600, (int(seconds) / 60) % 60);
  return text;
}

std::string ProgressMeter::line(uint64_t done) const {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? done / scale_ / elapsed : 0;
  char text[256];
  const int decimals = scale_ > 1 ? 1 : 0;  // MB with one decimal, plain counts without
  int used = std::snprintf(text, sizeof(text), "%s %.*f", label_.c_str(), decimals, done / scale_);
  if (total_ > 0) used += std::snprintf(text + used, sizeof(text) - used, "/%.*f", decimals, total_ / scale_);
  used += std::snprintf(text + used, sizeof(text) - used, " %s", unit_.c_str());
  if (total_ > 0)
    used += std::snprintf(text + used, sizeof(text) - used, " (%.0f%%)", 100.0 * std::min(done, total_) / total_);
  used += std::snprintf(text + used, sizeof(text) - used, ", %.*f %s/s", scale_ > 1 ? 2 : 0, rate, unit_.c_str());
  std::string result(text);
  if (total_ > 0 && done > 0 && done < total_ && rate > 0)
    result += ", ETA " + format_duration((total_ - done) / scale_ / rate);
  return result;
}

void ProgressMeter::update(uint64_t done) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_print_).count();
  if (tty_) {
    if (since < 0.2) return;
    out_ << "\r" << line(done) << "\033[K" << std::flush;
    last_print_ = now;
    return;
  }
  if (total_ > 0 && done >= total_) return;  // finish() prints the last line
  const int decile = total_ > 0 ? static_cast<int>(10.0 * std::min(done, total_) / total_) : 0;
  if (decile > last_decile_ || since >= 30) {
    out_ << line(done) << "\n" << std::flush;
    last_decile_ = decile;
    last_print_ = now;
  }
}

void ProgressMeter::finish(const std::string& suffix) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) out_ << "\r";
  out_ << line(done_) << " in " << format_duration(elapsed) << suffix << (tty_ ? "\033[K\n" : "\n") << std::flush;
}

}  // namespace prime::data
