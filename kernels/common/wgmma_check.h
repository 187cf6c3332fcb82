// A check of wgmma.cuh's products on the GPU for the tests: one warpgroup computes a 64 x N product
// in each way the kernels use the warpgroup MMAs, against which the test holds a CPU product.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// a [64, K] @ b[:, col0 : col0 + 64] in fp32 (a, b bf16 contiguous on one CUDA device; K 16 to 128 in
// steps of 16; b [K, W], W 64 or 128, col0 0 or 64 within it), one warpgroup, both stored in shared
// memory in wgmma_layout.h's layout: A from registers in the accumulator layout (a_in_registers) or by
// descriptor, K-major (a's rows as stored) or MN-major (a_mn_major: a^T's rows as stored, at columns
// col0 .. of a [K, 128] matrix: the MMA's transposed A); B by descriptor, MN-major (b's rows as
// stored, b_mn_major) or K-major (b^T's rows).
// Every combination; gka_solve_bf16_wgmma.cuh issues registers and MN-major, registers and K-major,
// descriptor and MN-major; GDN's warpgroup walk K-major A with either B and MN-major A with MN-major
// B. Needs an sm_90 device; defined in builds with the CUDA kernels only
// (kernels::built_with_cuda_kernels()).
at::Tensor wgmma_product(const at::Tensor& a, const at::Tensor& b, int64_t col0, bool a_in_registers, bool b_mn_major,
                         bool a_mn_major = false);

}  // namespace prime::kernels
