// Launchers of kernels/ssm_decode (the decode steps defined in ssm_decode_kernels.cu and called
// by ssm_decode.cpp; their fronts called by decode_inputs.cpp; CUDA builds only). The steps'
// operands are contiguous fp32 CUDA tensors on one device, shaped as in ssm_decode.h; o and y are
// [B,H,Dv] and [B,H,P]. The launchers check shapes, dtypes and the launch, and launch on the
// current stream.
#pragma once

#include <ATen/ATen.h>

#include "kernels/ssm_decode/decode_inputs.h"

namespace prime::kernels::detail {

void launch_gdn_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& g, const at::Tensor& beta, const at::Tensor& state,
                       const at::Tensor& o);

void launch_mamba2_decode(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state,
                          const at::Tensor& y);

// The steps' fused fronts (decode_inputs.h; defined in gdn_decode_inputs_kernels.cu and
// mamba2_decode_inputs_kernels.cu): the projections of the weights' dtype, `out` allocated as that
// header says. Each checks every operand.
void launch_gdn_decode_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& b, const at::Tensor& a, const GdnDecodeWeights& weights,
                              const GdnDecodeConvStates& states, const GdnDecodeInputs& out);

void launch_mamba2_decode_inputs(const at::Tensor& projection, const Mamba2DecodeWeights& weights,
                                 const at::Tensor& conv_state, const Mamba2DecodeInputs& out);

}  // namespace prime::kernels::detail
