// Learning-rate schedules: linear warm-up, then constant, cosine to min_lr_ratio x lr, or WSD
// (warm-up, stable, then a linear decay over the last decay_fraction of the steps).
#pragma once

#include <cstdint>
#include <string>

namespace prime::train {

enum class ScheduleKind { Constant, Cosine, Wsd };

struct Schedule {
  ScheduleKind kind = ScheduleKind::Cosine;
  double lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.1;
  double decay_fraction = 0.2;  // WSD only

  // Learning rate for step `step` (0-based) before any guard scaling.
  double at(int64_t step) const;
};

// "constant" | "cosine" | "wsd"; UserError otherwise.
ScheduleKind parse_schedule(const std::string& name);
const char* schedule_name(ScheduleKind kind);

}  // namespace prime::train
