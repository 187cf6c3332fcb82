// Dispatch of kernels/rms_norm: which operands the fused norm serves, and the calls that allocate
// the outputs and launch.
#include "kernels/rms_norm/rms_norm.h"

#include <torch/csrc/autograd/custom_function.h>

#include <climits>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/rms_norm/rms_norm_launch.h"
#endif

namespace prime::kernels {

namespace {

// Outputs of x's sizes and dtype; empty outputs need no launch.
at::Tensor output_like(const at::Tensor& x) { return new_output(x.sizes(), x.options()); }

// Operands the kernels serve, whether or not autograd records the call.
bool served_operands(const at::Tensor& x, const at::Tensor& weight) {
  if (!x.defined() || !weight.defined() || !use_cuda_kernels(x)) return false;
  if (!served_float_type(x.scalar_type()) || x.dim() < 1 || weight.dim() != 1 ||
      weight.scalar_type() != x.scalar_type() || weight.device() != x.device())
    return false;
  const int64_t D = x.size(-1);
  // Rows index the grid (one block, or a group of lanes, per row).
  return D >= 1 && D <= kRmsNormMaxDim && weight.size(0) == D && x.numel() / D <= INT_MAX;
}

at::Tensor forward_kernel(const at::Tensor& x, const at::Tensor& weight, double eps) {
  require_cuda_build("rms_norm");
  at::Tensor out = output_like(x);
#ifdef PRIME_WITH_CUDA
  if (out.numel() > 0)
    detail::launch_rms_norm(x.contiguous(), at::Tensor(), weight.contiguous(), eps, at::Tensor(), out);
#else
  (void)weight, (void)eps;
#endif
  return out;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RmsNormKernel : public torch::autograd::Function<RmsNormKernel> {
  static at::Tensor forward(AutogradContext* context, const at::Tensor& x, const at::Tensor& weight, double eps) {
    const at::Tensor xc = x.contiguous();
    context->save_for_backward({xc, weight});
    context->saved_data["eps"] = eps;
    return forward_kernel(xc, weight, eps);
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const double eps = context->saved_data["eps"].toDouble();
    const at::Tensor dy = grad_outputs[0].to(x.scalar_type()).contiguous();
    const bool weight_gradient = context->needs_input_grad(1);
    at::Tensor dx = output_like(x);
    at::Tensor normed = weight_gradient ? output_like(x) : at::Tensor();
#ifdef PRIME_WITH_CUDA
    if (x.numel() > 0) detail::launch_rms_norm_backward(x, dy, weight.contiguous(), eps, dx, normed);
#else
    (void)eps;
#endif
    // The torch form's weight gradient: the product rounded to the dtype, summed over the rows.
    at::Tensor d_weight = weight_gradient ? (dy * normed).reshape({-1, x.size(-1)}).sum(0) : at::Tensor();
    return {context->needs_input_grad(0) ? dx : at::Tensor(), d_weight, at::Tensor()};
  }
};

}  // namespace

bool rms_norm_apply(const at::Tensor& x, const at::Tensor& weight) {
  // The forward kernel alone is not differentiable: a call autograd records takes rms_norm_train.
  return served_operands(x, weight) && !records_gradient(x) && !records_gradient(weight);
}

bool rms_norm_train_apply(const at::Tensor& x, const at::Tensor& weight) {
  return served_operands(x, weight) && (records_gradient(x) || records_gradient(weight));
}

at::Tensor rms_norm_train(const at::Tensor& x, const at::Tensor& weight, double eps) {
  PRIME_CHECK(rms_norm_train_apply(x, weight), "rms_norm_train: operands the kernels do not serve (x ", x.sizes(),
              " ", x.scalar_type(), ", weight ", weight.sizes(), " ", weight.scalar_type(),
              "); ask rms_norm_train_apply first");
  require_cuda_build("rms_norm_train");
  return RmsNormKernel::apply(x, weight, eps);
}

bool add_rms_norm_apply(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight) {
  return rms_norm_apply(x, weight) && residual.defined() && !records_gradient(residual) &&
         residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type() &&
         residual.device() == x.device();
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  PRIME_CHECK(rms_norm_apply(x, weight), "rms_norm: operands the kernel does not serve (x ",
              x.sizes(), " ", x.scalar_type(), ", weight ", weight.sizes(), " ",
              weight.scalar_type(), "); ask rms_norm_apply first");
  return forward_kernel(x, weight, eps);
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                               const at::Tensor& weight, double eps) {
  PRIME_CHECK(add_rms_norm_apply(x, residual, weight), "add_rms_norm: operands the kernel does ",
              "not serve (x ", x.sizes(), " ", x.scalar_type(), ", residual ", residual.sizes(),
              " ", residual.scalar_type(), ", weight ", weight.sizes(), "); ask add_rms_norm_apply first");
  require_cuda_build("add_rms_norm");
  at::Tensor sum = output_like(x), normed = output_like(x);
#ifdef PRIME_WITH_CUDA
  if (sum.numel() > 0)
    detail::launch_rms_norm(x.contiguous(), residual.contiguous(), weight.contiguous(), eps, sum, normed);
#else
  (void)eps;
#endif
  return {sum, normed};
}

}  // namespace prime::kernels
