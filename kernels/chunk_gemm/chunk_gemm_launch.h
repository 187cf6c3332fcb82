// Launcher of kernels/chunk_gemm (defined in chunk_gemm_kernels.cu; called only by chunk_gemm.cpp
// in CUDA builds, on operands chunk_gemm_apply accepted).
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

// column_scale: undefined, or [batch, n] fp32 with its last stride 1.
void launch_chunk_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float alpha, float beta,
                       const at::Tensor& column_scale);

}  // namespace prime::kernels::detail
