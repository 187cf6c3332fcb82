#include "eval/kernel_vs_torch.h"

#include "kernels/common/policy.h"
#include "util/device_timing.h"

namespace prime::eval {

KernelVsTorch time_kernel_vs_torch(const std::function<void()>& call, double bytes, int calls, int warmup,
                                   int repeats, const at::Device& device) {
  const auto time_under = [&](kernels::Policy policy) {
    const kernels::ScopedKernelPolicy scoped(policy);
    return median_ms_per_call(call, calls, device, warmup, repeats);
  };
  KernelVsTorch out;
  out.kernel_ms = time_under(kernels::Policy::Auto);
  out.torch_ms = time_under(kernels::Policy::Torch);
  out.kernel_tbps = bytes / (out.kernel_ms * 1e-3) / 1e12;
  out.torch_tbps = bytes / (out.torch_ms * 1e-3) / 1e12;
  return out;
}

}  // namespace prime::eval
