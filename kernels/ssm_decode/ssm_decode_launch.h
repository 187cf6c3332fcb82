// Launchers of kernels/ssm_decode (defined in ssm_decode_kernels.cu; called only by
// ssm_decode.cpp in CUDA builds). Every operand is a contiguous fp32 CUDA tensor on one device,
// shaped as in ssm_decode.h; o and y are [B,H,Dv] and [B,H,P]. The launchers check shapes,
// dtypes and the launch, and launch on the current stream.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

void launch_gdn_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& g, const at::Tensor& beta, const at::Tensor& state,
                       const at::Tensor& o);

void launch_mamba2_decode(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state,
                          const at::Tensor& y);

}  // namespace prime::kernels::detail
