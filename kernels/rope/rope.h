// Fused rotary position embedding of q and k for inference: one launch reads q and k once and
// writes their rotated copies, where the torch form (model::Rope's rotate) runs about a dozen
// small kernels per attention layer (dtype casts, two multiplies, narrow, neg, cat, add, for
// each of q and k). The math is the torch form's, rounded the same way, so the results are
// bitwise equal to it on CUDA.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace prime::kernels {

// Whether rope_rotate serves these operands: policy Auto, no gradient to track (grad mode off,
// or none of the operands requires grad), q [B,T,Hq,D] and k [B,T,Hkv,D] CUDA tensors of one
// dtype among fp32, bf16 and fp16 (any strides), D even, cos and sin fp32 [1 or B, T, 1, D]
// (both the same shape), all on q's device. Otherwise (float64 included) the torch form runs.
bool rope_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin);

// {q', k'}: new contiguous tensors in q's dtype, x' = to_dtype(xf cos + rotate_half(xf) sin) with
// xf = fp32(x) and rotate_half(x) = cat(-x2, x1) over the halves of D; each product and the sum
// rounded once (no fused multiply-add), as the torch ops round them.
std::pair<at::Tensor, at::Tensor> rope_rotate(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                              const at::Tensor& sin);

// Whether rope_norm_rotate serves these operands: rope_apply(q, k, cos, sin) holds, q_weight and
// k_weight are 1-D [D] contiguous, 16-byte aligned tensors of q's dtype on q's device that need
// no gradient, D is an even number of 16-byte packs (8 bf16/fp16, 4 fp32) and at most 32 of them
// (bf16 D <= 256, fp32 D <= 128), q and k have unit element strides with every head's row on 16
// bytes, and cos and sin are contiguous and 16-byte aligned.
bool rope_norm_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_weight, const at::Tensor& k_weight,
                     const at::Tensor& cos, const at::Tensor& sin);

// The attention layer's q_norm and k_norm followed by the rotation, in one launch: what
// rope_rotate(rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps), cos, sin) returns, bit for
// bit (the norm rounded as model::rms_norm and kernels/rms_norm round it, each head's squares
// summed in kernels/rms_norm's order).
std::pair<at::Tensor, at::Tensor> rope_norm_rotate(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_weight,
                                                   const at::Tensor& k_weight, double eps, const at::Tensor& cos,
                                                   const at::Tensor& sin);

}  // namespace prime::kernels
