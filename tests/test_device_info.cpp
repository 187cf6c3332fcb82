// util/device_info.h: the bandwidth the traffic floors divide by.
#include <catch2/catch.hpp>

#include <string>

#include "test_helpers.h"
#include "util/device_info.h"

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

using namespace prime;

TEST_CASE("device info: a given bandwidth wins, the CPU falls back to an H200's", "[bench]") {
  CHECK(peak_memory_gbps(at::kCPU) == 0);
  CHECK(floor_bandwidth_gbps(0, at::kCPU) == 4800);
  CHECK(floor_bandwidth_gbps(1234.5, at::kCPU) == 1234.5);
}

TEST_CASE("device info: a GPU's peak bandwidth from its memory clock and bus width", "[bench][gpu]") {
  if (!test::gpu_available_or_fail()) return;
#ifdef PRIME_WITH_CUDA
  const at::Device cuda(at::kCUDA, 0);
  const std::string name = at::cuda::getDeviceProperties(0)->name;
  const double peak = peak_memory_gbps(cuda);
  INFO(name << ": " << peak << " GB/s");
  CHECK(floor_bandwidth_gbps(0, cuda) == peak);
  CHECK(floor_bandwidth_gbps(1000, cuda) == 1000);
  // The specifications: an H200 4.8 TB/s, an H100 SXM (HBM3, 80 GB) 3.35 TB/s; any GPU 0.1-20 TB/s.
  if (name.find("H200") != std::string::npos) CHECK(peak == 4800);
  if (name.find("H100 80GB HBM3") != std::string::npos) CHECK(peak == Approx(3350).epsilon(0.01));
  CHECK(peak > 100);
  CHECK(peak < 20000);
#endif
}
