// Programmatic dependent launch (Hopper and later): a kernel launched with it may start while the
// kernel before it on the stream is still running, once every block of that one has passed
// pdl_launch_dependents() or exited. Its blocks then do what needs nothing from the kernels before
// (reading weights ahead into L2), wait in pdl_wait() until those kernels have completed and their
// writes are visible, and only then read their inputs or write anything. The decode step is a
// chain of short kernels; this hides each launch's latency and the ramp of its first loads behind
// the tail of the kernel before it. A CUDA graph keeps the dependency (stream capture records it as
// a programmatic edge).
//
// The contract every kernel launched by launch_kernel() keeps:
//   - pdl_wait() before its first read of anything an earlier kernel writes and before its first
//     write (an earlier kernel may still read what it would overwrite), in every block;
//   - pdl_launch_dependents() only after pdl_wait() (so at most one kernel waits ahead of the one
//     running, and its blocks never hold a multiprocessor that an earlier kernel still needs).
// Both instructions are no-ops where the launch did not ask for it (PRIME_PDL=0, a device before
// sm_90, code compiled for an earlier architecture: launch_kernel() then launches plainly).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>

#include <mutex>
#include <unordered_map>
#include <utility>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/policy.h"

namespace prime::kernels::detail {

// Wait until the kernels before this one on the stream have completed and their memory is visible.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Let the next kernel on the stream launch (its blocks take multiprocessors as this one's leave).
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether `kernel` runs code that holds the two instructions above (compiled for sm_90 or later:
// an sm_80 build JIT-compiled on a Hopper GPU would run without them), asked once per kernel.
inline bool kernel_has_dependent_launch(const void* kernel) {
  static std::mutex mutex;
  static std::unordered_map<const void*, bool> known;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(kernel);
  if (found != known.end()) return found->second;
  cudaFuncAttributes attributes{};
  bool has = false;
  if (cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess)
    has = attributes.ptxVersion >= 90 && attributes.binaryVersion >= 90;
  else
    (void)cudaGetLastError();  // a failed query leaves no error for the next launch check
  known.emplace(kernel, has);
  return has;
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...), with programmatic dependent launch where
// dependent_launch() allows it and the kernel's code has it. A launch error throws, naming `name`.
template <typename... Params, typename... Args>
void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  const bool dependent = dependent_launch() && at::cuda::getCurrentDeviceProperties()->major >= 9 &&
                         kernel_has_dependent_launch(reinterpret_cast<const void*>(kernel));
  config.attrs = dependent ? &attribute : nullptr;
  config.numAttrs = dependent ? 1 : 0;
  const cudaError_t status = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (status != cudaSuccess)
    throw ::prime::internal_error("launching ", name, " failed: ", cudaGetErrorString(status));
}

}  // namespace prime::kernels::detail
