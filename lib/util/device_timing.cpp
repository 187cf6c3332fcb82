#include "util/device_timing.h"

#include <ATen/detail/CUDAHooksInterface.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace prime {

void synchronize_device(const at::Device& device) {
  if (device.is_cuda()) at::detail::getCUDAHooks().deviceSynchronize(device.index() < 0 ? 0 : device.index());
}

double median_ms(const std::function<void()>& body, const at::Device& device, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) body();
  synchronize_device(device);
  std::vector<double> samples;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    const auto start = std::chrono::steady_clock::now();
    body();
    synchronize_device(device);
    samples.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

double median_ms_per_call(const std::function<void()>& call, int calls, const at::Device& device, int warmup,
                          int repeats) {
  return median_ms([&] { for (int i = 0; i < calls; ++i) call(); }, device, warmup, repeats) / calls;
}

}  // namespace prime
