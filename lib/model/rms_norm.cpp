#include "model/rms_norm.h"

namespace prime::model {

at::Tensor rms_normalize(const at::Tensor& x, double eps) {
  return x * at::rsqrt(x.pow(2).mean({-1}, /*keepdim=*/true) + eps);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto accum_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return weight * rms_normalize(x.to(accum_type), eps).to(x.scalar_type());
}

at::Tensor head_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return rms_normalize(x, eps) * weight.to(x.scalar_type());
}

at::Tensor gated_rms_norm(const at::Tensor& o, const at::Tensor& gate, const at::Tensor& weight,
                          double eps) {
  const auto type = at::promote_types(o.scalar_type(), at::kFloat);  // f64 stays f64
  return head_rms_norm(o.to(type), weight, eps) * at::silu(gate.to(type));
}

}  // namespace prime::model
