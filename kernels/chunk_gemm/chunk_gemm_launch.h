// Launcher of kernels/chunk_gemm (defined in chunk_gemm_kernels.cu; called only by chunk_gemm.cpp
// in CUDA builds, on terms chunk_gemm_sum found served).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "kernels/chunk_gemm/chunk_gemm.h"

namespace prime::kernels::detail {

// out = sum of the terms + beta out: 1 to kMaxGemmTerms terms whose operands share their dtypes and out's
// batch dims, and their orientations (or, bf16 operands, two runs of terms in two pairs of orientations); a
// column scale undefined or [batch..., n] fp32 with its last stride 1; row scales and dots as GemmTerm says;
// out fp32, or bf16 with beta 0 and bf16 products. bf16_products: each operand element rounded to bf16, one
// bf16 MMA per 16-deep step (else 3xTF32 per 8-deep step).
void launch_chunk_gemm(const at::Tensor& out, const std::vector<GemmTerm>& terms, float beta, bool bf16_products);

}  // namespace prime::kernels::detail
