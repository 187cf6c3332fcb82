// x Wᵀ (+ bias): every weight projection of the model goes through here. At decode (1 to 4 rows
// of x, CUDA, no gradient) the projections are matrix-vector products bound by reading W, and
// kernels/linear_decode streams W at close to memory speed where cuBLAS's split-K GEMMs do not;
// everything else (training, prefill, the CPU) is at::linear, unchanged. Projections that share
// x (attention's q, k, v; the MLP's gate and up) can go in one launch.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace prime::model {

// What at::linear(x, weight, bias) returns ([..., N] in x's dtype): the decode kernel where
// kernels::linear_decode_apply holds (fp32 sums, the bias added in fp32, one rounding), else
// at::linear itself. bias may be undefined.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// {linear(x, weights[0], biases[0]), ...} (biases empty, or one per weight, undefined for none):
// one launch of the decode kernel when it serves every projection and there are at most
// kernels::kLinearDecodeMaxGroup of them (each output then equals linear's bit for bit), else
// linear per projection (at::linear where the kernel does not serve it).
std::vector<at::Tensor> linear_group(const at::Tensor& x, at::TensorList weights, at::TensorList biases = {});

// at::silu(linear(x, gate)) * linear(x, up), the SwiGLU MLP's hidden activation: one launch of the
// decode kernel (rounded as the torch form rounds) where it serves both projections and they have
// one shape, else exactly that torch form.
at::Tensor gated_linear_silu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up);

}  // namespace prime::model
