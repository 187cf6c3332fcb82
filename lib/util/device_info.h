// What the benchmarks need to know of a device beyond ATen's view of it.
#pragma once

#include <ATen/ATen.h>

namespace prime {

// The device's peak memory bandwidth in GB/s, the denominator of the traffic floors: an H200's
// specified 4,800 (the figure prime's recorded results use), any other CUDA device's from its
// memory clock and bus width at double data rate (an H100 SXM's HBM3: 3,352); 0 on the CPU and in
// builds without CUDA.
double peak_memory_gbps(const at::Device& device);

// The bandwidth a traffic floor divides by: `given` when > 0 (a --hbm-gbps flag), else the
// device's peak, else (the CPU) an H200's 4,800 as a reference.
double floor_bandwidth_gbps(double given, const at::Device& device);

}  // namespace prime
