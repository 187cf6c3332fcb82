// RMSNorm, the one normalisation of every layer: x * rsqrt(mean(x^2) + eps) over the last dim.
// The forms below differ only in where the dtype changes and what multiplies the result, each
// matching the implementation its weights were trained with (so none may be swapped for
// another: the roundings differ).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>

namespace prime::model {

// x * rsqrt(mean(x^2) + eps) in x's own dtype, no weight.
at::Tensor rms_normalize(const at::Tensor& x, double eps);

// Decoder-block norms and q_norm/k_norm, in transformers order: normalised in fp32 (float64
// stays float64), cast back to x's dtype, then weight times that. On CUDA the fused kernel
// (kernels/rms_norm) where kernels::rms_norm_apply holds, and where autograd records the call its
// autograd function (kernels::rms_norm_train_apply: a forward and a backward kernel); this torch
// form otherwise (the reference, and every CPU call).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// A decoder block's residual add and the norm after it: {hidden + mixed, rms_norm(hidden + mixed)}.
// One fused kernel where kernels::add_rms_norm_apply holds (the same sum, bit for bit), else the
// torch ops.
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& hidden, const at::Tensor& mixed,
                                               const at::Tensor& weight, double eps);

// An SSM head norm in the mixer's compute dtype (x's dtype): rms_normalize(x) * weight.
// x [..., D], weight [D]. fp32 x with an fp32 weight is rms_norm (the same math and rounding), so
// on CUDA it takes rms_norm's kernels.
at::Tensor head_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The gated output norm of GKA and GDN (normalise, then gate): head_rms_norm(o) * SiLU(gate),
// computed in fp32 (float64 stays float64), then rounded to out_type (the projection's input
// dtype; undefined: the compute dtype). o, gate [..., H, D]; weight [D]. On CUDA the fused kernel
// (kernels/gated_norm) where kernels::gated_norm_apply holds, forward and backward.
at::Tensor gated_rms_norm(const at::Tensor& o, const at::Tensor& gate, const at::Tensor& weight, double eps,
                          std::optional<at::ScalarType> out_type = std::nullopt);

// Mamba-2's output norm (gate, then normalise): rms_normalize(x * SiLU(z)) over each head's D,
// times the [H * D] weight, in x's dtype, then rounded to out_type (undefined: x's dtype).
// x, z [..., H, D]. On CUDA the same fused kernel where it applies.
at::Tensor rms_norm_of_gated(const at::Tensor& x, const at::Tensor& z, const at::Tensor& weight, double eps,
                             std::optional<at::ScalarType> out_type = std::nullopt);

}  // namespace prime::model
