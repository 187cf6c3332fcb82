#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace prime::train {

double Schedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return lr * static_cast<double>(step + 1) / warmup_steps;
  const double floor = lr * min_lr_ratio;
  const int64_t after = std::max<int64_t>(total_steps - warmup_steps, 1);
  const double progress = std::clamp(static_cast<double>(step - warmup_steps) / after, 0.0, 1.0);
  switch (kind) {
    case ScheduleKind::Constant:
      return lr;
    case ScheduleKind::Cosine:
      return floor + (lr - floor) * 0.5 * (1 + std::cos(M_PI * progress));
    case ScheduleKind::Wsd: {
      const double decay_start = 1.0 - decay_fraction;
      if (progress <= decay_start) return lr;
      return lr + (floor - lr) * (progress - decay_start) / std::max(decay_fraction, 1e-12);
    }
  }
  return lr;
}

ScheduleKind parse_schedule(const std::string& name) {
  if (name == "constant") return ScheduleKind::Constant;
  if (name == "cosine") return ScheduleKind::Cosine;
  if (name == "wsd") return ScheduleKind::Wsd;
  throw user_error("--schedule: unknown schedule '", name, "' (constant, cosine, wsd)");
}

const char* schedule_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::Constant: return "constant";
    case ScheduleKind::Cosine: return "cosine";
    case ScheduleKind::Wsd: return "wsd";
  }
  return "?";
}

}  // namespace prime::train
