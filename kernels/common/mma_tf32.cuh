// The raw m16n8k8 TF32 tensor-core instruction and the 3xTF32 product built on it (fp32 accuracy:
// a = a_hi + a_lo split by kernels/common/tf32_split.cuh, a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi,
// fp32 accumulation), shared by the kernels written on raw MMAs (gka_solve, chunk_gemm).
// Fragment layouts (PTX ISA, mma.m16n8k8 .tf32), g = lane / 4, t = lane % 4:
//   A (16 x 8): a_0 = (g, t), a_1 = (g + 8, t), a_2 = (g, t + 4), a_3 = (g + 8, t + 4);
//   B (8 x 8):  b_0 = (t, g), b_1 = (t + 4, g);
//   C (16 x 8): c_0 = (g, 2t), c_1 = (g, 2t + 1), c_2 = (g + 8, 2t), c_3 = (g + 8, 2t + 1).
#pragma once

#include <cstdint>

namespace prime::kernels::detail {

// d += a b on the tensor cores (TF32 operands, fp32 accumulator).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d += a b in 3xTF32 (b_hi, b_lo: the B fragment's two registers each), the small terms first.
__device__ __forceinline__ void mma_tf32x3(float (&d)[4], const uint32_t (&a_hi)[4], const uint32_t (&a_lo)[4],
                                           const uint32_t* b_hi, const uint32_t* b_lo) {
  mma_tf32(d, a_lo, b_hi[0], b_hi[1]);
  mma_tf32(d, a_hi, b_lo[0], b_lo[1]);
  mma_tf32(d, a_hi, b_hi[0], b_hi[1]);
}

}  // namespace prime::kernels::detail
