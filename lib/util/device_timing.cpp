#include "util/device_timing.h"

#include <ATen/detail/CUDAHooksInterface.h>

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_profiler_api.h>
#endif

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

double graph_ms_per_call(const std::function<void()>& call, int calls, const at::Device& device, int warmup,
                         int repeats) {
#ifdef PRIME_WITH_CUDA
  const c10::cuda::CUDAGuard device_guard(device);
  at::cuda::CUDAGraph graph;
  const c10::cuda::CUDAStream stream = at::cuda::getStreamFromPool();
  at::cuda::getCurrentCUDAStream().synchronize();
  {
    const c10::cuda::CUDAStreamGuard guard(stream);
    call();
    stream.synchronize();
    graph.capture_begin();
    for (int i = 0; i < calls; ++i) call();
    graph.capture_end();
  }
  stream.synchronize();
  return median_ms([&] { graph.replay(); }, device, warmup, repeats) / calls;
#else
  (void)call, (void)calls, (void)device, (void)warmup, (void)repeats;
  return 0;
#endif
}

void run_in_profiler_range(const std::function<void()>& body, const at::Device& device) {
  body();
  synchronize_device(device);
#ifdef PRIME_WITH_CUDA
  if (device.is_cuda()) cudaProfilerStart();
#endif
  body();
  synchronize_device(device);
#ifdef PRIME_WITH_CUDA
  if (device.is_cuda()) cudaProfilerStop();
#endif
}

}  // namespace prime
