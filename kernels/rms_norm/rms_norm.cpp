// Dispatch of kernels/rms_norm: which operands the fused norm serves, and the calls that allocate
// the outputs and launch.
#include "kernels/rms_norm/rms_norm.h"

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

}  // namespace

bool rms_norm_apply(const at::Tensor& x, const at::Tensor& weight) {
  if (!x.defined() || !weight.defined() || !use_cuda_kernels(x)) return false;
  // The kernels are not differentiable: a call autograd would record runs the torch form.
  if (records_gradient(x) || records_gradient(weight)) return false;
  if (!served_float_type(x.scalar_type()) || x.dim() < 1 || weight.dim() != 1 ||
      weight.scalar_type() != x.scalar_type() || weight.device() != x.device())
    return false;
  const int64_t D = x.size(-1);
  // Rows index the grid (one block, or a group of lanes, per row).
  return D >= 1 && D <= kRmsNormMaxDim && weight.size(0) == D && x.numel() / D <= INT_MAX;
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
  require_cuda_build("rms_norm");
  at::Tensor out = output_like(x);
#ifdef PRIME_WITH_CUDA
  if (out.numel() > 0)
    detail::launch_rms_norm(x.contiguous(), at::Tensor(), weight.contiguous(), eps, at::Tensor(), out);
#else
  (void)eps;
#endif
  return out;
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
