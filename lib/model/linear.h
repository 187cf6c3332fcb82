// x Wᵀ (+ bias): every weight projection of the model goes through here. At decode (1 to 4 rows
// of x, CUDA, no gradient) the projections are matrix-vector products bound by reading W, and
// kernels/linear_decode streams W at close to memory speed where cuBLAS's split-K GEMMs do not;
// everything else (training, prefill, the CPU) is at::linear, unchanged.
#pragma once

#include <ATen/ATen.h>

namespace prime::model {

// What at::linear(x, weight, bias) returns ([..., N] in x's dtype): the decode kernel where
// kernels::linear_decode_apply holds (fp32 sums, the bias added in fp32, one rounding), else
// at::linear itself. bias may be undefined.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

}  // namespace prime::model
