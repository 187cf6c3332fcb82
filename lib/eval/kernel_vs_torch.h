// One call timed with prime's kernels (policy Auto) and with the torch forms (policy Torch), the
// same operands in one run: what the memory-bound rows of `prime-bench kernels` report.
#pragma once

#include <ATen/ATen.h>

#include <functional>

namespace prime::eval {

struct KernelVsTorch {
  double kernel_ms = 0, torch_ms = 0;      // per call, median of the repeats
  double kernel_tbps = 0, torch_tbps = 0;  // bytes / time
};

// `calls` calls queued per timed run (a short call's time is not its synchronisation); `bytes`
// is what one call must move at least.
KernelVsTorch time_kernel_vs_torch(const std::function<void()>& call, double bytes, int calls, int warmup,
                                   int repeats, const at::Device& device);

}  // namespace prime::eval
