#include "model/ssm_common.h"

#include <ATen/core/grad_mode.h>

#include "kernels/short_conv/short_conv.h"
#include "util/error.h"

namespace prime::model {

namespace {

// The conv with document starts, as a sum over lags d = 0..K-1 of w[K-1-d] u_{t-d}, each term
// kept where no start lies in (t-d, t]: conv1d cannot mask per output step.
at::Tensor causal_conv_with_starts(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                                   const at::Tensor& starts) {
  PRIME_CHECK(starts.dim() == 2 && starts.size(0) == u.size(0) && starts.size(1) == u.size(1) &&
                  starts.scalar_type() == at::kBool,
              "causal_conv: starts must be [B, T] bool, got ", starts.sizes(), " for u ", u.sizes());
  const int64_t steps = u.size(1), K = weight.size(2);
  const at::Tensor w = weight.to(u.scalar_type()).select(1, 0);  // [C, K]
  const at::Tensor padded = at::constant_pad_nd(u, {0, 0, K - 1, 0});  // K-1 zero steps first
  const at::Tensor flags = starts.to(u.device());
  at::Tensor open = at::ones_like(flags);  // no start in (t-d, t] so far
  at::Tensor y = bias.defined() ? bias.to(u.scalar_type()).expand_as(u) : at::zeros_like(u);
  for (int64_t d = 0; d < K; ++d) {
    if (d > 0) {  // lag d also needs step t-d+1 not to start a document
      const at::Tensor shifted = at::constant_pad_nd(flags, {d - 1, 0}).narrow(1, 0, steps);
      open = open.logical_and(shifted.logical_not());
    }
    const at::Tensor term = padded.narrow(1, K - 1 - d, steps) * w.select(1, K - 1 - d);
    y = y + term * open.unsqueeze(-1).to(u.scalar_type());
  }
  return y;
}

}  // namespace

at::Tensor causal_conv(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                       at::Tensor* conv_state, const at::Tensor& starts) {
  PRIME_CHECK(u.dim() == 3 && weight.dim() == 3 && weight.size(0) == u.size(2));
  if (starts.defined()) {
    PRIME_CHECK(conv_state == nullptr, "causal_conv: document starts and a conv state are exclusive");
    return causal_conv_with_starts(u, weight, bias, starts);
  }
  const int64_t channels = u.size(2);
  const int64_t history = weight.size(2) - 1;
  at::Tensor input = u.transpose(1, 2);  // [B,C,T]
  if (conv_state && conv_state->defined()) {
    input = at::cat({conv_state->to(input.scalar_type()), input}, 2);
  } else {
    input = at::constant_pad_nd(input, {history, 0});
  }
  std::optional<at::Tensor> bias_cast;
  if (bias.defined()) bias_cast = bias.to(input.scalar_type());
  at::Tensor y = at::conv1d(input, weight.to(input.scalar_type()), bias_cast,
                            at::IntArrayRef{1}, at::IntArrayRef{0}, at::IntArrayRef{1}, channels);
  if (conv_state) {
    at::Tensor tail = input.narrow(2, input.size(2) - history, history);
    store_state(*conv_state, tail);
  }
  return y.transpose(1, 2);
}

at::Tensor causal_conv_silu(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                            at::Tensor* conv_state, const at::Tensor& starts) {
  // On CUDA the fused kernel (kernels/short_conv) where it applies; the torch form otherwise.
  if (starts.defined()) {
    PRIME_CHECK(conv_state == nullptr, "causal_conv_silu: document starts and a conv state are exclusive");
    if (kernels::short_conv_apply(u, weight, at::Tensor(), starts))
      return kernels::short_conv_silu(u, weight, bias, nullptr, starts);
    return at::silu(causal_conv(u, weight, bias, nullptr, starts));
  }
  if (kernels::short_conv_apply(u, weight, conv_state ? *conv_state : at::Tensor())) {
    // A cache's first prefill: zeros are the history the torch form pads with.
    if (conv_state && !conv_state->defined())
      *conv_state = at::zeros({u.size(0), u.size(2), weight.size(2) - 1}, u.options());
    return kernels::short_conv_silu(u, weight, bias, conv_state);
  }
  return at::silu(causal_conv(u, weight, bias, conv_state));
}

void store_state(at::Tensor& slot, const at::Tensor& value) {
  if (!value.defined()) return;  // e.g. GKA's H without a solve
  // Under autograd the state stays a node of the graph (an in-place write could clobber a tensor
  // saved for backward); decode steps run without grad, and those are what a graph captures.
  const bool tracked = at::GradMode::is_enabled() && (value.requires_grad() || (slot.defined() && slot.requires_grad()));
  if (!slot.defined() || tracked) {
    slot = slot.defined() ? value.to(slot.scalar_type()) : value.contiguous();
    return;
  }
  PRIME_CHECK(slot.sizes() == value.sizes(), "cache state ", slot.sizes(), " given ", value.sizes());
  if (!slot.is_same(value)) slot.copy_(value);
}

at::Tensor expand_heads(const at::Tensor& x, int64_t groups) {
  if (groups == 1) return x;
  const auto sizes = x.sizes();
  return x.unsqueeze(3)
      .expand({sizes[0], sizes[1], sizes[2], groups, sizes[3]})
      .reshape({sizes[0], sizes[1], sizes[2] * groups, sizes[3]});
}

at::Tensor log_decay(const at::Tensor& a, const at::Tensor& A_log, const at::Tensor& dt_bias) {
  // fp32, except that f64 stays f64 (gradient checks against finite differences need it).
  const auto type = at::promote_types(a.scalar_type(), at::kFloat);
  return -at::exp(A_log.to(type)) * at::softplus(a.to(type) + dt_bias.to(type));
}

at::Tensor l2_normalize(const at::Tensor& x, double eps) {
  return x / (at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/true) + eps);
}

at::Tensor l2_normalize_inside(const at::Tensor& x, double scale) {
  return x * (at::rsqrt(x.pow(2).sum(-1, /*keepdim=*/true) + 1e-6) * scale);
}


}  // namespace prime::model
