// probe_dependent_launch (pdl_check.h).
#include "kernels/common/pdl_check.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>

#include "kernels/common/pdl.cuh"

namespace prime::kernels {

namespace {

constexpr int kValues = 1024;
constexpr unsigned long long kHoldNanoseconds = 50'000;

__device__ __forceinline__ unsigned long long global_time() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// One block: lets the consumer launch, holds for kHoldNanoseconds, writes values[i] = i + 1, then
// notes its end (times[0]).
__global__ void probe_producer(int* __restrict__ values, unsigned long long* __restrict__ times) {
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  const unsigned long long start = global_time();
  while (global_time() - start < kHoldNanoseconds) {
  }
  for (int i = threadIdx.x; i < kValues; i += blockDim.x) values[i] = i + 1;
  __syncthreads();
  if (threadIdx.x == 0) times[0] = global_time();
}

// Notes its start (times[1], a slot the producer never touches), waits, copies the values.
__global__ void probe_consumer(const int* __restrict__ values, int* __restrict__ copy,
                               unsigned long long* __restrict__ times) {
  if (threadIdx.x == 0) times[1] = global_time();
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  for (int i = threadIdx.x; i < kValues; i += blockDim.x) copy[i] = values[i];
}

}  // namespace

DependentLaunchProbe probe_dependent_launch() {
  const auto options = at::TensorOptions().device(at::kCUDA, at::cuda::current_device());
  const at::Tensor values = at::zeros({kValues}, options.dtype(at::kInt));
  const at::Tensor copy = at::zeros({kValues}, options.dtype(at::kInt));
  const at::Tensor times = at::zeros({2}, options.dtype(at::kLong));
  auto* time_data = reinterpret_cast<unsigned long long*>(times.data_ptr<int64_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  detail::launch_kernel("probe_producer", probe_producer, 1, 256, 0, stream, values.data_ptr<int>(), time_data);
  detail::launch_kernel("probe_consumer", probe_consumer, 1, 256, 0, stream, values.data_ptr<int>(),
                        copy.data_ptr<int>(), time_data);
  const at::Tensor host_times = times.cpu();
  DependentLaunchProbe probe;
  probe.overlapped = host_times[1].item<int64_t>() < host_times[0].item<int64_t>();
  probe.waited = at::equal(copy.cpu(), at::arange(1, kValues + 1, at::kInt));
  return probe;
}

}  // namespace prime::kernels
