// Autograd wrapper and dispatch of kernels/short_conv. The forward and backward kernels take the
// conv state as the history before t = 0; the cache hand-over (in place without autograd, out of
// place with it, like model::store_state) is decided here.
#include "kernels/short_conv/short_conv.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>


#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/short_conv/short_conv_launch.h"
#endif

namespace prime::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool is_storage_type(const at::Tensor& tensor) {
  return tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kBFloat16;
}

// An absent bias or history travels through the autograd function as an empty tensor: autograd
// records every input's device and dtype, which an undefined tensor has not.
at::Tensor absent(const at::Tensor& like) { return at::empty({0}, like.options().dtype(at::kFloat)); }
at::Tensor present_or_undefined(const at::Tensor& tensor) { return tensor.numel() > 0 ? tensor : at::Tensor(); }

// Inputs: u [B,T,C] contiguous, weight [C,K] fp32, bias [C] fp32 or empty, history [B,C,K-1]
// contiguous or empty, starts [B,T] bool contiguous or empty. Output y [B,T,C] in u's dtype.
struct ShortConvSilu : public torch::autograd::Function<ShortConvSilu> {
  static at::Tensor forward(AutogradContext* context, const at::Tensor& u, const at::Tensor& weight,
                            const at::Tensor& bias_or_empty, const at::Tensor& history_or_empty,
                            const at::Tensor& starts_or_empty) {
    require_cuda_build("short_conv_silu");
    at::Tensor y = new_output(u.sizes(), u.options());
#ifdef PRIME_WITH_CUDA
    detail::launch_short_conv_forward(u, weight, present_or_undefined(bias_or_empty),
                                      present_or_undefined(history_or_empty),
                                      present_or_undefined(starts_or_empty), y);
#endif
    context->save_for_backward({u, weight, bias_or_empty, history_or_empty, starts_or_empty});
    return y;
  }

  // The backward kernel recomputes the pre-activation from u (no [B,T,C] buffer saved) and
  // writes per-(batch row, time tile) partials of dweight and dbias, summed here: a fixed-order
  // reduction, so the gradients are deterministic.
  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor &u = saved[0], &weight = saved[1];
    const at::Tensor bias = present_or_undefined(saved[2]), history = present_or_undefined(saved[3]);
    const at::Tensor starts = present_or_undefined(saved[4]);
    const at::Tensor grad_y = grad_outputs[0].to(u.scalar_type()).contiguous();
    const int64_t B = u.size(0), T = u.size(1), C = u.size(2), K = weight.size(1);
    at::Tensor grad_u = new_output(u.sizes(), u.options());
    at::Tensor grad_history;
    if (history.defined() && context->needs_input_grad(3))
      grad_history = new_output(history.sizes(), history.options());
    at::Tensor partials;
#ifdef PRIME_WITH_CUDA
    partials = new_output({detail::short_conv_partial_rows(B, T), K + 1, C},
                          u.options().dtype(at::kFloat));
    detail::launch_short_conv_backward(grad_y, u, weight, bias, history, starts, grad_u,
                                       grad_history, partials);
#else
    (void)B, (void)T, (void)C, (void)K;
    require_cuda_build("short_conv_silu");
#endif
    const at::Tensor sums = partials.sum(0);  // [K+1, C]
    const at::Tensor grad_weight = sums.narrow(0, 0, K).t().contiguous();
    const at::Tensor grad_bias = bias.defined() ? sums.select(0, K) : at::Tensor();
    return {grad_u, grad_weight, grad_bias, grad_history, at::Tensor()};
  }
};

// Whether autograd records this call (then the state must not be overwritten in place: the old
// one is saved for backward, and it may be a graph node itself).
bool tracked(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
             const at::Tensor& state) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : {&u, &weight, &bias, &state})
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

}  // namespace

bool short_conv_apply(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& conv_state,
                      const at::Tensor& starts) {
  if (!use_cuda_kernels(u) || !is_storage_type(u) || u.dim() != 3) return false;
  if (weight.dim() != 3 || weight.size(0) != u.size(2) || weight.size(1) != 1 ||
      weight.size(2) < 2 || weight.size(2) > 4 || !at::isFloatingType(weight.scalar_type()) ||
      weight.device() != u.device())
    return false;
  if (starts.defined())
    return !conv_state.defined() && starts.scalar_type() == at::kBool && starts.dim() == 2 &&
           starts.size(0) == u.size(0) && starts.size(1) == u.size(1) && starts.device() == u.device();
  if (!conv_state.defined()) return true;
  return is_storage_type(conv_state) && conv_state.device() == u.device() &&
         conv_state.is_contiguous() && conv_state.dim() == 3 &&
         conv_state.size(0) == u.size(0) && conv_state.size(1) == u.size(2) &&
         conv_state.size(2) == weight.size(2) - 1;
}

at::Tensor short_conv_silu(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                           at::Tensor* conv_state, const at::Tensor& starts) {
  PRIME_CHECK(short_conv_apply(u, weight, conv_state ? *conv_state : at::Tensor(), starts),
              "short_conv_silu: operands the kernel does not serve (u ", u.sizes(), ", weight ",
              weight.sizes(), "); ask short_conv_apply first");
  require_cuda_build("short_conv_silu");
  const int64_t C = weight.size(0), K = weight.size(2);
  // fp32 copies for the kernels; autograd casts their gradients back to the parameters' dtype.
  const at::Tensor w = weight.to(at::kFloat).reshape({C, K}).contiguous();
  const at::Tensor b = bias.defined() ? bias.to(u.device(), at::kFloat).contiguous() : at::Tensor();
  const at::Tensor input = u.contiguous();
  at::Tensor* state = conv_state && conv_state->defined() ? conv_state : nullptr;
  const bool in_place = state && !tracked(input, weight, bias, *state);
#ifdef PRIME_WITH_CUDA
  if (in_place && input.size(1) == 1) {  // a decode step: one fused kernel
    at::Tensor y = new_output(input.sizes(), input.options());
    detail::launch_short_conv_decode(input, w, b, *state, y);
    return y;
  }
#endif
  at::Tensor y = ShortConvSilu::apply(input, w, b.defined() ? b : absent(input),
                                      state ? *state : absent(input),
                                      starts.defined() ? starts.contiguous() : absent(input));
  if (in_place) {
#ifdef PRIME_WITH_CUDA
    detail::launch_short_conv_state_update(input, *state);  // after the forward read the history
#endif
  } else if (state) {
    // As causal_conv: the new state is the tail of [state, u], a node of the graph (formed in
    // the state's dtype, so an fp32 history under bf16 inputs is kept exactly, as in place).
    *state = at::cat({*state, input.transpose(1, 2).to(state->scalar_type())}, 2)
                 .narrow(2, input.size(1), K - 1)
                 .contiguous();
  }
  return y;
}

}  // namespace prime::kernels
