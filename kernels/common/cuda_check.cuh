// Checks shared by the kernels' launchers: CUDA API errors and launch errors name the file, line
// and the kernel; tensor checks name the op and the operand. Launchers run on inputs that the
// op wrappers built themselves, so a failed check is a programming error (InternalError).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>
#ifdef __CUDACC__
#include <ATen/cuda/CUDAContext.h>
#endif

#include <cstddef>
#include <cstdint>

#include "util/error.h"

#define PRIME_CUDA_CHECK(call)                                                                \
  do {                                                                                        \
    const cudaError_t prime_cuda_status = (call);                                             \
    if (prime_cuda_status != cudaSuccess)                                                     \
      throw ::prime::internal_error(__FILE__, ":", __LINE__, ": ", #call, " failed: ",        \
                                    cudaGetErrorString(prime_cuda_status),                    \
                                    " (run with CUDA_LAUNCH_BLOCKING=1 or compute-sanitizer " \
                                    "to find the failing kernel)");                           \
  } while (0)

// After a <<<...>>> launch: a bad configuration (grid, shared memory) shows up here.
#define PRIME_CUDA_CHECK_LAUNCH(kernel_name)                                                  \
  do {                                                                                        \
    const cudaError_t prime_launch_status = cudaGetLastError();                               \
    if (prime_launch_status != cudaSuccess)                                                   \
      throw ::prime::internal_error(__FILE__, ":", __LINE__, ": launching ", kernel_name,     \
                                    " failed: ", cudaGetErrorString(prime_launch_status));    \
  } while (0)

namespace prime::kernels {

// A contiguous CUDA tensor of `type` with `dims` dimensions; `op` and `name` go in the message.
inline void check_operand(const at::Tensor& tensor, const char* op, const char* name,
                          at::ScalarType type, int64_t dims) {
  PRIME_CHECK(tensor.defined(), op, ": ", name, " is undefined");
  PRIME_CHECK(tensor.is_cuda(), op, ": ", name, " must be a CUDA tensor");
  PRIME_CHECK(tensor.scalar_type() == type, op, ": ", name, " must be ", c10::toString(type),
              ", got ", c10::toString(tensor.scalar_type()));
  PRIME_CHECK(tensor.dim() == dims, op, ": ", name, " must have ", dims, " dimensions, got ",
              tensor.sizes());
  PRIME_CHECK(tensor.is_contiguous(), op, ": ", name, " must be contiguous");
}

// check_operand with these sizes (a name of its own: a one-element braced list would otherwise
// pick check_operand's dimension count).
inline void check_operand_sizes(const at::Tensor& tensor, const char* op, const char* name, at::ScalarType type,
                                at::IntArrayRef sizes) {
  check_operand(tensor, op, name, type, static_cast<int64_t>(sizes.size()));
  PRIME_CHECK(tensor.sizes() == sizes, op, ": ", name, " ", tensor.sizes(), " must be ", sizes);
}

// The tensor's data starts on a multiple of `bytes` (the kernels' vector and fragment accesses).
inline void check_aligned(const at::Tensor& tensor, const char* op, const char* name, size_t bytes) {
  PRIME_CHECK(reinterpret_cast<std::uintptr_t>(tensor.data_ptr()) % bytes == 0, op, ": ", name, " must be ", bytes,
              "-byte aligned");
}

#ifdef __CUDACC__
// kernel<<<grid, threads, shared>>>(params) on the current stream, the kernel's dynamic shared
// memory limit raised to `shared` first; both checked, `name` in the message.
template <typename Kernel, typename Params>
void launch_with_shared(Kernel kernel, dim3 grid, size_t shared, int threads, const Params& params, const char* name) {
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  kernel<<<grid, threads, shared, at::cuda::getCurrentCUDAStream()>>>(params);
  PRIME_CUDA_CHECK_LAUNCH(name);
}
#endif

}  // namespace prime::kernels
