#include "model/linear.h"

#include "kernels/linear_decode/linear_decode.h"
#include "util/error.h"

namespace prime::model {

namespace {

// The one decision between the decode kernel and at::linear, for every entry point here.
bool decode_kernel_serves(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return kernels::linear_decode_apply(x, weight, bias);
}

at::Tensor torch_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (decode_kernel_serves(x, weight, bias)) return kernels::linear_decode(x, weight, bias);
  return torch_linear(x, weight, bias);
}

std::vector<at::Tensor> linear_group(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  PRIME_CHECK(biases.empty() || biases.size() == weights.size(), "linear_group: ", biases.size(), " biases for ",
              weights.size(), " weights");
  auto bias = [&](size_t i) { return biases.empty() ? at::Tensor() : biases[i]; };
  bool served = !weights.empty() && static_cast<int64_t>(weights.size()) <= kernels::kLinearDecodeMaxGroup;
  for (size_t i = 0; served && i < weights.size(); ++i) served = decode_kernel_serves(x, weights[i], bias(i));
  if (served) return kernels::linear_decode_group(x, weights, biases);
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i < weights.size(); ++i) outs.push_back(model::linear(x, weights[i], bias(i)));
  return outs;
}

at::Tensor gated_linear_silu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up) {
  if (gate.defined() && up.defined() && gate.sizes() == up.sizes() && decode_kernel_serves(x, gate, at::Tensor()) &&
      decode_kernel_serves(x, up, at::Tensor()))
    return kernels::linear_decode_gated_silu(x, gate, up);
  return at::silu(model::linear(x, gate)) * model::linear(x, up);
}

}  // namespace prime::model
