// The harness's launch of gka_solve's mma reverse-sweep kernel (its own translation unit: the kernel files
// keep their kernels in anonymous namespaces).
#include "kernels/gka_solve/gka_solve_backward_mma_kernels.cu"
// Trees since the sweep's bf16x3 steps make the kernel a template on its arithmetic: the harness times
// 3xTF32 (bf16x3 with -DPRIME_AB_SWEEP_BF16X3=1).
#ifdef PRIME_GKA_SWEEP_STEPS
#ifndef PRIME_AB_SWEEP_BF16X3
#define PRIME_AB_SWEEP_BF16X3 0
#endif
#define SWEEP_KERNEL gka_chunk_solve_backward_mma_kernel<PRIME_AB_SWEEP_BF16X3 != 0>
#else
#define SWEEP_KERNEL gka_chunk_solve_backward_mma_kernel
#endif
void h_bwd(int M, int C, int D, int N, double r, const float* q, const float* keys, const float* start, const float* weights,
           const float* from_start, const float* frob, const float* iterates, const float* grad, float** g) {
  using namespace prime::kernels::detail;
  const size_t bytes = gka_chunk_solve_backward_mma_shared_bytes(C, D, N);
  cudaFuncSetAttribute(SWEEP_KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  SWEEP_KERNEL<<<M, 512, bytes>>>(q, keys, start, weights, from_start, frob, iterates, grad,
      g[0], g[1], g[2], g[3], g[4], g[5], C, D, (C + 15) / 16 * 16, r, N, M);
}
