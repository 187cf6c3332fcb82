// Launchers of kernels/ssm_decode (the decode steps defined in ssm_decode_kernels.cu and
// gka_decode_kernels.cu, called by ssm_decode.cpp; their fronts called by decode_inputs.cpp;
// CUDA builds only). The GDN and Mamba-2 steps' operands are contiguous fp32 CUDA tensors on one
// device, shaped as in ssm_decode.h; o and y are [B,H,Dv] and [B,H,P]. The launchers check
// shapes, dtypes and the launch, and launch on the current stream.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

#include "kernels/ssm_decode/decode_inputs.h"
#include "kernels/ssm_decode/ssm_decode.h"

namespace prime::kernels::detail {

void launch_gdn_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& g, const at::Tensor& beta, const at::Tensor& state,
                       const at::Tensor& o);

// skip: the layer's D [H] (fp32 or bf16, contiguous) adding D_h x_p to y, or undefined.
void launch_mamba2_decode(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state,
                          const at::Tensor& skip, const at::Tensor& y);

// GKA's step (gka_decode_kernels.cu): q, k, v [B,H,D] and the optional [B,H] gates of one solve
// dtype, the states fp32 [B,H,D,D] (kk_state unused where num_iter == 0), o [B,H,D] fp32.
void launch_gka_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& alpha,
                       const at::Tensor& decay_kk, const at::Tensor& decay_kv, const at::Tensor& kk_state,
                       const at::Tensor& kv_state, const at::Tensor& o, const GkaDecodeOptions& options);

// Shared memory gka_decode_kernel takes at head dimension `dim` in `solve_type` (SIZE_MAX beyond 128).
size_t gka_decode_shared_bytes(int64_t dim, at::ScalarType solve_type);

// The steps' fused fronts (decode_inputs.h; defined in gdn_decode_inputs_kernels.cu,
// mamba2_decode_inputs_kernels.cu and gka_decode_inputs_kernels.cu): the projections of the
// weights' dtype, `out` allocated as that header says. Each checks every operand.
void launch_gdn_decode_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& b, const at::Tensor& a, const GdnDecodeWeights& weights,
                              const GdnDecodeConvStates& states, const GdnDecodeInputs& out);

void launch_mamba2_decode_inputs(const at::Tensor& projection, const Mamba2DecodeWeights& weights,
                                 const at::Tensor& conv_state, const Mamba2DecodeInputs& out);

// x [B, hidden] (the token, for the gates); out's q, k, v [B,H,D] and its gates [B,H] (undefined
// where the layer has none) of one solve dtype, fp32 or float64.
void launch_gka_decode_inputs(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const GkaDecodeWeights& weights, const GkaDecodeConvStates& states,
                              const GkaDecodeInputs& out);

}  // namespace prime::kernels::detail
