// Shared by the kernels' tests (tests/test_kernels_*.cpp).
#pragma once

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

}  // namespace prime::test
