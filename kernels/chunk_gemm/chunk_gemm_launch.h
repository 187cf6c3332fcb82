// Launcher of kernels/chunk_gemm (defined in chunk_gemm_kernels.cu; called only by chunk_gemm.cpp
// in CUDA builds, on operands chunk_gemm_apply accepted).
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

// column_scale: undefined, or [batch, n] fp32 with its last stride 1. bf16_products: each operand element
// rounded to bf16, one bf16 MMA per 16-deep step (else 3xTF32 per 8-deep step).
void launch_chunk_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float alpha, float beta,
                       const at::Tensor& column_scale, bool bf16_products = false);

}  // namespace prime::kernels::detail
