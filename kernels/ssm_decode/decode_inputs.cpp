// Dispatch of the SSM decode steps' fused fronts (decode_inputs.h): which operands the kernels
// serve, and the calls that allocate the outputs and launch.
#include "kernels/ssm_decode/decode_inputs.h"

#include <ATen/core/grad_mode.h>

#include <cstdlib>
#include <initializer_list>
#include <string>

#include "kernels/common/policy.h"
#include "kernels/common/switches.h"
#include "kernels/ssm_decode/ssm_decode.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/ssm_decode/ssm_decode_launch.h"
#endif

namespace prime::kernels {

namespace {

// PRIME_FUSED_DECODE_INPUTS=0: the torch forms (read at each call: timings switch it).
bool opted_out() {
  return environment_switch<bool>("PRIME_FUSED_DECODE_INPUTS", {{"1", false, "the fused input kernels"},
                                                                {"0", true, "the torch forms"}});
}

// What both fronts ask of the token x: a decode token [B, 1, hidden] of bf16 or fp32 under
// policy Auto, no autograd, D served.
bool token_served(const at::Tensor& x, int64_t head_dim) {
  if (!x.defined() || !use_cuda_kernels(x) || at::GradMode::is_enabled() || opted_out()) return false;
  if (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kFloat) return false;
  return x.dim() == 3 && x.size(1) == 1 && x.size(0) >= 1 && head_dim >= 1 && head_dim <= kDecodeMaxDim;
}

// What the GDN and GKA fronts ask of the token and their head layout: the token served and each
// of the q, k and v head counts dividing H.
bool heads_served(const at::Tensor& x, const DecodeHeads& w) {
  if (!token_served(x, w.head_dim) || w.heads < 1) return false;
  for (const int64_t heads : {w.q_heads, w.k_heads, w.v_heads})
    if (heads < 1 || w.heads % heads != 0) return false;
  return true;
}

bool has_sizes(const at::Tensor& tensor, std::initializer_list<int64_t> sizes) {
  return tensor.sizes() == at::IntArrayRef(sizes);
}

// Defined, contiguous, of `type`, of these sizes, on x's device.
bool operand(const at::Tensor& t, const at::Tensor& x, at::ScalarType type, std::initializer_list<int64_t> sizes) {
  return t.defined() && t.device() == x.device() && t.scalar_type() == type && t.is_contiguous() &&
         has_sizes(t, sizes);
}

// A conv over `channels`: weight [C, 1, K] and bias [C] or none of x's dtype, history fp32 [B, C, K-1].
bool conv_served(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& history,
                 int64_t channels, int64_t K) {
  return K >= 2 && K <= 4 && operand(weight, x, x.scalar_type(), {channels, 1, K}) &&
         (!bias.defined() || operand(bias, x, x.scalar_type(), {channels})) &&
         operand(history, x, at::kFloat, {x.size(0), channels, K - 1});
}

// A per-head parameter (A_log, dt_bias): [H], fp32 or x's dtype.
bool head_parameter(const at::Tensor& t, const at::Tensor& x, int64_t heads) {
  return operand(t, x, at::kFloat, {heads}) || operand(t, x, x.scalar_type(), {heads});
}

int64_t conv_size(const at::Tensor& weight) { return weight.defined() && weight.dim() == 3 ? weight.size(2) : 0; }

}  // namespace

bool gdn_decode_inputs_apply(const at::Tensor& x, const GdnDecodeWeights& w, const GdnDecodeConvStates& states) {
  const int64_t H = w.heads, D = w.head_dim;
  if (!heads_served(x, w)) return false;
  if (!head_parameter(w.A_log, x, H) || !head_parameter(w.dt_bias, x, H)) return false;
  if (!w.q_conv.defined())  // no short conv: no other conv operand either
    return !w.k_conv.defined() && !w.v_conv.defined() && !states.q.defined() && !states.k.defined() &&
           !states.v.defined();
  const int64_t K = conv_size(w.q_conv);
  return conv_served(x, w.q_conv, w.q_conv_bias, states.q, w.q_heads * D, K) &&
         conv_served(x, w.k_conv, w.k_conv_bias, states.k, w.k_heads * D, K) &&
         conv_served(x, w.v_conv, w.v_conv_bias, states.v, w.v_heads * D, K);
}

GdnDecodeInputs gdn_decode_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& b, const at::Tensor& a, const GdnDecodeWeights& weights,
                                  const GdnDecodeConvStates& states) {
  PRIME_CHECK(q.defined() && q.dim() == 2, "gdn_decode_inputs: q must be [B, C]");
  require_cuda_build("gdn_decode_inputs");
  const int64_t B = q.size(0), H = weights.heads, D = weights.head_dim;
  const auto options = q.options().dtype(at::kFloat);
  GdnDecodeInputs out{new_output({B, H, D}, options), new_output({B, H, D}, options), new_output({B, H, D}, options),
                      new_output({B, H}, options), new_output({B, H}, options)};
#ifdef PRIME_WITH_CUDA
  detail::launch_gdn_decode_inputs(q, k, v, b, a, weights, states, out);
#else
  (void)k, (void)v, (void)b, (void)a, (void)states;
#endif
  return out;
}

bool mamba2_decode_inputs_apply(const at::Tensor& x, const Mamba2DecodeWeights& w, const at::Tensor& conv_state) {
  const int64_t Hq = w.q_heads, Hkv = w.kv_heads, D = w.head_dim;
  if (!token_served(x, D) || Hq < 1 || Hkv < 1 || Hq % Hkv != 0) return false;
  if (!head_parameter(w.A_log, x, Hq) || !head_parameter(w.dt_bias, x, Hq)) return false;
  if (w.B_norm.defined() != w.C_norm.defined()) return false;
  if (w.B_norm.defined() &&
      !(operand(w.B_norm, x, x.scalar_type(), {D}) && operand(w.C_norm, x, x.scalar_type(), {D})))
    return false;
  return conv_served(x, w.conv, w.conv_bias, conv_state, (2 * Hkv + Hq) * D, conv_size(w.conv));
}

Mamba2DecodeInputs mamba2_decode_inputs(const at::Tensor& projection, const Mamba2DecodeWeights& weights,
                                        const at::Tensor& conv_state) {
  PRIME_CHECK(projection.defined() && projection.dim() == 2, "mamba2_decode_inputs: projection must be [B, N]");
  require_cuda_build("mamba2_decode_inputs");
  const int64_t B = projection.size(0), H = weights.q_heads, D = weights.head_dim;
  const auto options = projection.options().dtype(at::kFloat);
  Mamba2DecodeInputs out{new_output({B, H, D}, options), new_output({B, H, D}, options),
                         new_output({B, H, D}, options), new_output({B, H}, options), new_output({H}, options)};
#ifdef PRIME_WITH_CUDA
  detail::launch_mamba2_decode_inputs(projection, weights, conv_state, out);
#else
  (void)conv_state;
#endif
  return out;
}

bool gka_decode_inputs_apply(const at::Tensor& x, const GkaDecodeWeights& w, const GkaDecodeConvStates& states) {
  const int64_t H = w.heads, D = w.head_dim;
  if (!heads_served(x, w)) return false;
  const int64_t K = conv_size(w.q_conv), hidden = x.size(2);
  if (!conv_served(x, w.q_conv, at::Tensor(), states.q, w.q_heads * D, K) ||
      !conv_served(x, w.k_conv, at::Tensor(), states.k, w.k_heads * D, K))
    return false;
  const bool v_served = w.v_conv.defined() ? conv_served(x, w.v_conv, at::Tensor(), states.v, w.v_heads * D, K)
                                           : !states.v.defined();
  if (!v_served) return false;
  // A gate: its weight [H, hidden] and bias [H] of x's dtype, or neither.
  const auto gate_served = [&](const at::Tensor& weight, const at::Tensor& bias) {
    if (!weight.defined() || !bias.defined()) return !weight.defined() && !bias.defined();
    return operand(weight, x, x.scalar_type(), {H, hidden}) && operand(bias, x, x.scalar_type(), {H});
  };
  if (!gate_served(w.b_proj, w.b_bias) || !gate_served(w.alpha_proj, w.alpha_bias)) return false;
  return !w.a_proj.defined() || (operand(w.a_proj, x, x.scalar_type(), {H, hidden}) &&
                                 head_parameter(w.A_log, x, H) && head_parameter(w.dt_bias, x, H));
}

GkaDecodeInputs gka_decode_inputs(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const GkaDecodeWeights& weights, const GkaDecodeConvStates& states,
                                  at::ScalarType solve_type) {
  PRIME_CHECK(x.defined() && x.dim() == 3 && x.size(1) == 1, "gka_decode_inputs: x must be [B, 1, hidden]");
  PRIME_CHECK(q.defined() && q.dim() == 2, "gka_decode_inputs: q must be [B, C]");
  PRIME_CHECK(solve_type == at::kFloat || solve_type == at::kDouble,
              "gka_decode_inputs: the solve dtype must be fp32 or float64");
  require_cuda_build("gka_decode_inputs");
  const int64_t B = x.size(0), H = weights.heads, D = weights.head_dim;
  const auto options = x.options().dtype(solve_type);
  GkaDecodeInputs out{new_output({B, H, D}, options), new_output({B, H, D}, options), new_output({B, H, D}, options),
                      weights.alpha_proj.defined() ? new_output({B, H}, options) : at::Tensor(),
                      weights.a_proj.defined() ? new_output({B, H}, options) : at::Tensor()};
#ifdef PRIME_WITH_CUDA
  detail::launch_gka_decode_inputs(x.reshape({B, x.size(2)}).contiguous(), q, k, v, weights, states, out);
#else
  (void)k, (void)v, (void)states;
#endif
  return out;
}

}  // namespace prime::kernels
