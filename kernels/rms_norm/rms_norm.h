// Fused RMSNorm: model::rms_norm's math (transformers order) in one kernel, and the residual add
// that precedes a decoder block's second norm fused with it. The torch form is ~8 small ATen
// kernels per call (cast, pow, mean, add, rsqrt, mul, cast, mul), each a pass over the rows, and
// its backward about as many again; at decode they are launch-bound (a decode step runs 4 norms
// per attention layer), in training they are passes over [tokens, hidden] activations.
// rms_norm and add_rms_norm serve calls autograd does not record; rms_norm_train is the autograd
// function training uses (the forward kernel, then one backward kernel).
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace prime::kernels {

// Largest normalised dimension (x.size(-1)) the kernels serve.
constexpr int64_t kRmsNormMaxDim = 16384;

// Whether rms_norm serves these operands: policy Auto, x a CUDA tensor of fp32, bf16 or fp16 with
// at least one dimension, weight 1-D of x's dtype and device with x.size(-1) <= 16384 elements,
// and no gradient wanted (grad mode off, or neither operand requires grad).
bool rms_norm_apply(const at::Tensor& x, const at::Tensor& weight);

// As rms_norm_apply, and residual of x's sizes, dtype and device (not requiring grad under grad
// mode).
bool add_rms_norm_apply(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight);

// model::rms_norm's result and rounding order: y = to_x(xf * rsqrt(mean(xf^2) + eps)), xf =
// fp32(x), then to_x(fp32(weight) * fp32(y)). Rows are all leading dims (any strides: made
// contiguous); the output is contiguous, of x's sizes and dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// Whether rms_norm_train serves these operands: as rms_norm_apply, but for a call autograd records
// (x or the weight requires grad under grad mode).
bool rms_norm_train_apply(const at::Tensor& x, const at::Tensor& weight);

// rms_norm as an autograd function (node "RmsNormKernel"): the forward kernel saves only x; the
// backward kernel gives dx = to_T(s g - xf s^3 sum(g xf) / D) with g = to_T(dy w), the roundings
// of the torch form's autograd, and the weight's gradient, where wanted, is the row sum of
// to_T(dy n) over the normalised rows n the same kernel writes.
at::Tensor rms_norm_train(const at::Tensor& x, const at::Tensor& weight, double eps);

// {sum, normed}: sum = to_x(fp32(x) + fp32(residual)) (what x + residual gives in ATen), normed =
// rms_norm(sum, weight, eps) from the rounded sum. One kernel writes both.
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                               const at::Tensor& weight, double eps);

}  // namespace prime::kernels
