// Shared by the kernels' tests (tests/test_kernels_*.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>

namespace prime::test {

// While alive, every output a kernel launcher allocates starts as NaN (PRIME_KERNELS_POISON=1),
// so an element a kernel leaves unwritten fails the comparison.
struct PoisonOutputs {
  PoisonOutputs() { ::setenv("PRIME_KERNELS_POISON", "1", 1); }
  ~PoisonOutputs() { ::unsetenv("PRIME_KERNELS_POISON"); }
  PoisonOutputs(const PoisonOutputs&) = delete;
  PoisonOutputs& operator=(const PoisonOutputs&) = delete;
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

}  // namespace prime::test
