#include "model/rms_norm.h"

#include "kernels/gated_norm/gated_norm.h"
#include "kernels/rms_norm/rms_norm.h"

namespace prime::model {

at::Tensor rms_normalize(const at::Tensor& x, double eps) {
  return x * at::rsqrt(x.pow(2).mean({-1}, /*keepdim=*/true) + eps);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (kernels::rms_norm_apply(x, weight)) return kernels::rms_norm(x, weight, eps);
  if (kernels::rms_norm_train_apply(x, weight)) return kernels::rms_norm_train(x, weight, eps);
  const auto accum_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return weight * rms_normalize(x.to(accum_type), eps).to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& hidden, const at::Tensor& mixed,
                                               const at::Tensor& weight, double eps) {
  if (kernels::add_rms_norm_apply(hidden, mixed, weight))
    return kernels::add_rms_norm(hidden, mixed, weight, eps);
  at::Tensor sum = hidden + mixed;
  at::Tensor normed = rms_norm(sum, weight, eps);
  return {sum, normed};
}

at::Tensor head_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  // In fp32 with an fp32 weight this is rms_norm's math and rounding (its casts are no-ops), so
  // rms_norm serves it, with its kernels on CUDA: the mixers' head norms run in fp32 in training.
  if (x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat) return rms_norm(x, weight, eps);
  return rms_normalize(x, eps) * weight.to(x.scalar_type());
}

at::Tensor gated_rms_norm(const at::Tensor& o, const at::Tensor& gate, const at::Tensor& weight, double eps,
                          std::optional<at::ScalarType> out_type) {
  const auto type = at::promote_types(o.scalar_type(), at::kFloat);  // f64 stays f64
  const at::ScalarType result_type = out_type.value_or(type);
  if (kernels::gated_norm_apply(o, gate, weight, result_type))
    return kernels::gated_norm(o, gate, weight, eps, kernels::GateOrder::AfterNorm, result_type);
  return (head_rms_norm(o.to(type), weight, eps) * at::silu(gate.to(type))).to(result_type);
}

at::Tensor rms_norm_of_gated(const at::Tensor& x, const at::Tensor& z, const at::Tensor& weight, double eps,
                             std::optional<at::ScalarType> out_type) {
  const at::ScalarType result_type = out_type.value_or(x.scalar_type());
  if (kernels::gated_norm_apply(x, z, weight, result_type))
    return kernels::gated_norm(x, z, weight, eps, kernels::GateOrder::BeforeNorm, result_type);
  const auto sizes = x.sizes();
  const at::Tensor normed = rms_normalize(x * at::silu(z.to(x.scalar_type())), eps);
  return (normed.flatten(-2) * weight.to(x.scalar_type())).view(sizes).to(result_type);
}

}  // namespace prime::model
