#include "util/device_info.h"

#include <string>

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>
#endif

#include "util/error.h"

namespace prime {

double peak_memory_gbps(const at::Device& device) {
#ifdef PRIME_WITH_CUDA
  if (!device.is_cuda()) return 0;
  const int index = device.has_index() ? device.index() : at::cuda::current_device();
  // " H200": not a GH200, whose HBM3 part runs at ~4 TB/s (the formula below gives it).
  if (std::string(at::cuda::getDeviceProperties(index)->name).find(" H200") != std::string::npos) return 4800;
  int kilohertz = 0, bits = 0;
  if (cudaDeviceGetAttribute(&kilohertz, cudaDevAttrMemoryClockRate, index) != cudaSuccess ||
      cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, index) != cudaSuccess)
    throw internal_error("cannot read device ", index, "'s memory clock and bus width");
  return 2.0 * kilohertz * 1e3 * bits / 8 / 1e9;
#else
  (void)device;
  return 0;
#endif
}

double floor_bandwidth_gbps(double given, const at::Device& device) {
  if (given > 0) return given;
  const double peak = peak_memory_gbps(device);
  return peak > 0 ? peak : 4800;
}

}  // namespace prime
