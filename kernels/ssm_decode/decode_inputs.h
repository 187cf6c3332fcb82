// The fronts of the SSM decode steps, each in one launch: from one token's projections (the
// model's dtype) to the fp32 operands of gdn_decode_step / mamba2_decode_step (ssm_decode.h).
// GKA's, whose outputs are in its solve dtype for gka_decode_step, takes two launches (its gates
// are dot products with the token itself, which its k and v heads need first).
// The torch forms (GdnMixer::prepare, Mamba2Mixer::prepare, GkaMixer::prepare at T = 1) are twenty
// to fifty small launches each (casts, the short convs, the norms op by op, the gates), and at B = 1 a decode
// step pays for each launch far more than for its bytes. PRIME_FUSED_DECODE_INPUTS=0 keeps the
// torch forms (to time them side by side).
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// The head layout of the GDN and GKA fronts: q, k and v heads, each repeated to the H heads it
// serves, of D each.
struct DecodeHeads {
  int64_t q_heads = 0, k_heads = 0, v_heads = 0;  // each divides heads
  int64_t heads = 0;                              // H, the expanded head count
  int64_t head_dim = 0;                           // D, 1..kDecodeMaxDim
};

// The layout of a mixer config with num_q_heads, num_k_heads, num_v_heads, num_heads(), head_dim.
template <typename Config>
DecodeHeads decode_heads(const Config& config) {
  return {config.num_q_heads, config.num_k_heads, config.num_v_heads, config.num_heads(), config.head_dim};
}

// ---- GDN --------------------------------------------------------------------------------------
// Per channel the short conv over the cache's history plus SiLU (the conv states updated in
// place); per head the L2 norm of q (times its scale) and of k, each head repeated to the H heads
// it serves; per head beta = sigmoid(b) (times 2 with negative eigenvalues) and
// g = -exp(A_log) softplus(a + dt_bias).

// The layer's fixed operands, in the model's dtype (x's) unless said, on x's device.
struct GdnDecodeWeights : DecodeHeads {
  at::Tensor q_conv, k_conv, v_conv;              // [C, 1, K], 2 <= K <= 4; all undefined: no conv
  at::Tensor q_conv_bias, k_conv_bias, v_conv_bias;  // [C] or undefined
  at::Tensor A_log, dt_bias;                         // [H], fp32 (as models keep them) or x's dtype
  double q_scale = 1.0;                              // q's norm is scaled by it (D^-1/2)
  double beta_scale = 1.0;                           // 2 where negative eigenvalues are allowed
};

// The cache's conv histories [B, C, K-1], fp32, contiguous: read, then overwritten in place with
// the last K-1 inputs. Undefined when the layer has no short conv.
struct GdnDecodeConvStates {
  at::Tensor q, k, v;
};

// The delta rule's operands for gdn_decode_step: q, k, v [B, H, D] and g, beta [B, H], fp32.
struct GdnDecodeInputs {
  at::Tensor q, k, v, g, beta;
};

// Whether gdn_decode_inputs serves the token x [B, 1, hidden] (whose projections it will take):
// policy Auto, grad mode off, x a CUDA tensor of bf16 or fp32, every weight of x's dtype,
// contiguous and shaped as above on x's device, the conv states fp32 [B, C, K-1] contiguous there
// (or all undefined with the convs), PRIME_FUSED_DECODE_INPUTS not "0". Else the torch form runs.
bool gdn_decode_inputs_apply(const at::Tensor& x, const GdnDecodeWeights& weights,
                             const GdnDecodeConvStates& states);

// q, k, v [B, Cq|Ck|Cv] and b, a [B, H] (Cq = q_heads D, ...), x's dtype: the token's projections.
GdnDecodeInputs gdn_decode_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& b, const at::Tensor& a, const GdnDecodeWeights& weights,
                                  const GdnDecodeConvStates& states);

// ---- Mamba-2 ----------------------------------------------------------------------------------
// From the in_proj output [z | x | B | C | dt]: per head of B and C the RMS norm with its weight
// (use_qk_norm), per channel of [x | B | C] the short conv over the cache's history plus SiLU (the
// conv state updated in place), each head repeated to the H heads it serves; per head
// delta = softplus(dt + dt_bias), and A = -exp(A_log).

// The layer's fixed operands, in the model's dtype (x's) unless said, on x's device.
struct Mamba2DecodeWeights {
  int64_t q_heads = 0, kv_heads = 0;  // C and z have q_heads = H heads, x and B kv_heads (divides H)
  int64_t head_dim = 0;               // D, 1..kDecodeMaxDim
  at::Tensor conv;                    // [(2 kv_heads + q_heads) D, 1, K], 2 <= K <= 4
  at::Tensor conv_bias;               // [(2 kv_heads + q_heads) D] or undefined
  at::Tensor B_norm, C_norm;          // [D], or both undefined: no norm of B and C
  double bc_norm_eps = 1e-6;
  at::Tensor A_log, dt_bias;  // [H], fp32 (as models keep them) or x's dtype
};

// The scan's operands for mamba2_decode_step: x, B, C [B, H, D], delta [B, H], A [H], fp32.
struct Mamba2DecodeInputs {
  at::Tensor x, B, C, delta, A;
};

// Whether mamba2_decode_inputs serves the token x [B, 1, hidden] (whose in_proj it will take):
// policy Auto, grad mode off, x a CUDA tensor of bf16 or fp32, every weight of x's dtype,
// contiguous and shaped as above on x's device, conv_state fp32 [B, C, K-1] contiguous there,
// PRIME_FUSED_DECODE_INPUTS not "0". Else the torch form runs.
bool mamba2_decode_inputs_apply(const at::Tensor& x, const Mamba2DecodeWeights& weights, const at::Tensor& conv_state);

// projection [B, 2 q_heads D + 2 kv_heads D + H] (x's dtype): the token's in_proj output.
Mamba2DecodeInputs mamba2_decode_inputs(const at::Tensor& projection, const Mamba2DecodeWeights& weights,
                                        const at::Tensor& conv_state);

// ---- GKA --------------------------------------------------------------------------------------
// Per channel of q, k and v the short conv over the cache's history plus SiLU (the conv states
// updated in place; without v's conv, v is its projection as it is); per head of q and k the L2
// norm y / (||y|| + 1e-6); each head repeated to the H heads it serves. Per head, from the token x
// itself (fp32 sums of x's dtype's products, as the torch form's fp32 matmuls): k and v scaled by
// sigmoid(b_proj x + b_bias) + 1e-6, alpha = sigmoid(alpha_proj x + alpha_bias) and the log decay
// -exp(A_log) softplus(a_proj x + dt_bias). Everything in fp32, stored in the solve dtype.

// The layer's fixed operands, in the model's dtype (x's) unless said, on x's device.
struct GkaDecodeWeights : DecodeHeads {
  at::Tensor q_conv, k_conv;                      // [C, 1, K], 2 <= K <= 4, no bias
  at::Tensor v_conv;                                // [C, 1, K], or undefined: v is not convolved
  at::Tensor b_proj, b_bias;                        // [H, hidden], [H]; both undefined: no beta gate
  at::Tensor alpha_proj, alpha_bias;                // [H, hidden], [H]; both undefined: alpha = 1
  at::Tensor a_proj;                                // [H, hidden]; undefined: no decay
  at::Tensor A_log, dt_bias;                        // [H], fp32 (as models keep them) or x's dtype
};

// The cache's conv histories [B, C, K-1], fp32, contiguous: read, then overwritten in place with
// the last K-1 inputs. v is undefined where v is not convolved.
struct GkaDecodeConvStates {
  at::Tensor q, k, v;
};

// gka_decode_step's operands, in the solve dtype: q, k, v [B, H, D]; alpha and the log decay
// [B, H], undefined where the layer has no such gate.
struct GkaDecodeInputs {
  at::Tensor q, k, v, alpha, log_decay;
};

// Whether gka_decode_inputs serves the token x [B, 1, hidden]: policy Auto, grad mode off, x a
// CUDA tensor of bf16 or fp32, every weight of x's dtype (A_log and dt_bias fp32 or x's),
// contiguous and shaped as above on x's device, the conv states fp32 [B, C, K-1] contiguous
// there, PRIME_FUSED_DECODE_INPUTS not "0". Else the torch form runs.
bool gka_decode_inputs_apply(const at::Tensor& x, const GkaDecodeWeights& weights, const GkaDecodeConvStates& states);

// q, k, v [B, Cq|Ck|Cv] (Cq = q_heads D, ...), x's dtype: the token's projections. solve_type:
// fp32 or float64.
GkaDecodeInputs gka_decode_inputs(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const GkaDecodeWeights& weights, const GkaDecodeConvStates& states,
                                  at::ScalarType solve_type);

}  // namespace prime::kernels
