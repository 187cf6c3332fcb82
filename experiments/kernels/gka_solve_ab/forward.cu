// The harness's launch of gka_solve's mma forward kernel (its own translation unit: the kernel files
// keep their kernels in anonymous namespaces).
#include "kernels/gka_solve/gka_solve_mma_kernels.cu"
void h_fwd(int M, int C, int D, int N, double r, const float* q, const float* keys, const float* start, const float* weights,
           const float* from_start, const float* frob, float* x, float* iterates) {
  using namespace prime::kernels::detail;
  const size_t bytes = gka_chunk_solve_mma_shared_bytes(C, D);
  cudaFuncSetAttribute(gka_chunk_solve_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  gka_chunk_solve_mma_kernel<<<M, 512, bytes>>>(q, keys, start, weights, from_start, frob, x, iterates, C, D,
      (C + 15) / 16 * 16, r, N, M);
}
