#include "model/linear.h"

#include "kernels/linear_decode/linear_decode.h"

namespace prime::model {

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (kernels::linear_decode_apply(x, weight, bias)) return kernels::linear_decode(x, weight, bias);
  return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

}  // namespace prime::model
