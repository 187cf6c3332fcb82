// Pieces shared by the SSM mixers (GKA, GDN, Mamba-2): the short causal conv, GQA head
// expansion, the decay gate, L2 normalisation and the gated output norm. Math in
// design/ssm-layers.md ("Shared pieces").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace prime::model {

// Depthwise causal conv over time, before the activation: y_t[c] = bias[c] +
// sum_j weight[c,0,j] * u_{t-K+1+j}[c], zeros (or `conv_state`) before t = 0.
// u [B,T,C], weight [C,1,K], bias [C] or undefined. If conv_state is given ([B,C,K-1], the last
// K-1 inputs of the previous call) it is read as the history and replaced by the new last K-1
// inputs. Returns [B,T,C] in u's dtype.
at::Tensor causal_conv(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                       at::Tensor* conv_state);

// Writes `value` into the cache tensor `slot` in place, in slot's dtype, so the cache keeps its
// memory (see LayerCache); an undefined slot takes a contiguous copy of value, and so does any
// slot while autograd tracks the state.
void store_state(at::Tensor& slot, const at::Tensor& value);

// GQA expansion [B,T,Hkv,D] -> [B,T,Hkv*groups,D]; expanded head e reads kv head floor(e/groups).
at::Tensor expand_heads(const at::Tensor& x, int64_t groups);

// Log of the per-step decay, fp32: g = -exp(A_log) * softplus(a + dt_bias). a [B,T,H].
at::Tensor log_decay(const at::Tensor& a, const at::Tensor& A_log, const at::Tensor& dt_bias);

// x / (||x||_2 + eps) over the last dim (GKA's normalisation).
at::Tensor l2_normalize(const at::Tensor& x, double eps);

// RMSNorm over the last dim times weight, then times SiLU(gate) (normalise, then gate).
// o, gate [..., D]; weight [D]. Computed in fp32, returned fp32.
at::Tensor gated_rms_norm(const at::Tensor& o, const at::Tensor& gate, const at::Tensor& weight,
                          double eps);

}  // namespace prime::model
