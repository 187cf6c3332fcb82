// Shared by the kernels' tests (tests/test_kernels_*.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <functional>

#include "test_helpers.h"

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace prime::test {

// While alive, every output a kernel launcher allocates starts as NaN (PRIME_KERNELS_POISON=1),
// so an element a kernel leaves unwritten fails the comparison.
struct PoisonOutputs {
  ScopedEnv poison{"PRIME_KERNELS_POISON", "1"};
};

// While alive, cuBLAS runs fp32 matmuls in full fp32 (no TF32), as the torch-ops references
// the kernels are compared with must.
struct FullFp32Matmuls {
  FullFp32Matmuls() : previous_(at::globalContext().allowTF32CuBLAS()) {
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~FullFp32Matmuls() { at::globalContext().setAllowTF32CuBLAS(previous_); }
  FullFp32Matmuls(const FullFp32Matmuls&) = delete;
  FullFp32Matmuls& operator=(const FullFp32Matmuls&) = delete;

 private:
  bool previous_;
};

// ||got - want|| / ||want|| (Frobenius norms, float64 on the CPU): the kernels' error measure.
inline double norm_relative_error(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor a = got.to(at::kCPU, at::kDouble), b = want.to(at::kCPU, at::kDouble);
  return (a - b).norm().item<double>() / std::max(b.norm().item<double>(), 1e-30);
}

#ifdef PRIME_WITH_CUDA
// Captures `work` into `graph` on a side stream, as a decode step is captured: nothing runs until
// graph.replay() (which then runs on the current stream).
inline void capture(at::cuda::CUDAGraph& graph, const std::function<void()>& work) {
  const c10::cuda::CUDAStream stream = at::cuda::getStreamFromPool();
  at::cuda::getCurrentCUDAStream().synchronize();
  {
    const c10::cuda::CUDAStreamGuard guard(stream);
    graph.capture_begin();
    work();
    graph.capture_end();
  }
  stream.synchronize();
}
#endif

}  // namespace prime::test
