// Fused depthwise causal short conv + SiLU, the front of every SSM mixer's q/k/v (GDN, GKA) or
// x/B/C (Mamba-2) branch: y = silu(causal_conv(u)) with causal_conv as in lib/model/ssm_common.h.
// One pass over u instead of the torch form's transpose, pad or cat, cuDNN conv and silu, each a
// full read and write of [B,T,C]. An autograd function (gradients of u, weight, bias and the
// history), plus a decode kernel that updates the cache's conv state in place.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// Whether short_conv_silu serves these operands: policy Auto, u a CUDA [B,T,C] tensor of fp32 or
// bf16, weight [C,1,K] floating with 2 <= K <= 4, on u's device; a defined conv_state must be a
// contiguous [B,C,K-1] fp32 or bf16 tensor on that device; defined starts must be [B,T] bool on
// that device, with no conv_state. Otherwise the torch form runs.
bool short_conv_apply(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& conv_state,
                      const at::Tensor& starts = at::Tensor());

// silu(causal_conv(u, weight, bias, conv_state)) in u's dtype, accumulated in fp32 (see
// model::causal_conv_silu for the operands). bias [C] or undefined. With a conv_state it is read
// as the history before t = 0 and then holds the last K-1 inputs (u's values in the state's
// dtype): overwritten in place when autograd does not track the call (decode, prefill under no
// grad; T == 1 takes the fused decode kernel), else replaced out of place like store_state does,
// and then the old state is an input of the graph (its gradient flows when it requires grad).
// starts [B,T] bool (packed documents) or undefined: no window reaches back across a flagged
// step, forward and backward (see model::causal_conv).
at::Tensor short_conv_silu(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                           at::Tensor* conv_state, const at::Tensor& starts = at::Tensor());

}  // namespace prime::kernels
