// Launcher of kernels/chunk_gemm (defined in chunk_gemm_kernels.cu; called only by chunk_gemm.cpp
// in CUDA builds, on operands chunk_gemm_apply accepted).
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

void launch_chunk_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float alpha, float beta);

}  // namespace prime::kernels::detail
