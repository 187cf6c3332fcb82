// Dispatch of kernels/gated_norm: which operands the fused gated norms serve, and the autograd
// function that allocates the outputs and launches.
#include "kernels/gated_norm/gated_norm.h"

#include <torch/csrc/autograd/custom_function.h>

#include <vector>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/gated_norm/gated_norm_launch.h"
#endif

namespace prime::kernels {

namespace {

bool fp32_or_bf16(at::ScalarType type) { return type == at::kFloat || type == at::kBFloat16; }

// [..., H, D] as [N, H, D] with unit stride over D (a view where the strides allow, else a copy).
at::Tensor as_rows(const at::Tensor& t) {
  at::Tensor rows = t.reshape({-1, t.size(-2), t.size(-1)});
  return rows.stride(2) == 1 ? rows : rows.contiguous();
}

// The forward's launch on [N, H, D] rows (weight fp32, or bf16 outside autograd), out in out_type.
at::Tensor forward_rows(const at::Tensor& x3, const at::Tensor& gate3, const at::Tensor& weight, double eps,
                        bool gate_first, at::ScalarType out_type) {
  at::Tensor out = new_output(x3.sizes(), x3.options().dtype(out_type));
#ifdef PRIME_WITH_CUDA
  detail::launch_gated_norm(x3, gate3, weight, eps, gate_first, out);
#else
  (void)gate3, (void)weight, (void)eps, (void)gate_first;
#endif
  return out;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct GatedNormKernel : public torch::autograd::Function<GatedNormKernel> {
  // weight is fp32 here (gated_norm casts it: autograd casts its gradient back).
  static at::Tensor forward(AutogradContext* context, const at::Tensor& x, const at::Tensor& gate,
                            const at::Tensor& weight, double eps, bool gate_first, at::ScalarType out_type) {
    const at::Tensor x3 = as_rows(x), gate3 = as_rows(gate), w = weight.contiguous();
    context->save_for_backward({x3, gate3, w});
    context->saved_data["eps"] = eps;
    context->saved_data["gate_first"] = gate_first;
    context->saved_data["sizes"] = x.sizes().vec();
    return forward_rows(x3, gate3, w, eps, gate_first, out_type).view(x.sizes());
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor &x3 = saved[0], &gate3 = saved[1], &w = saved[2];
    const double eps = context->saved_data["eps"].toDouble();
    const bool gate_first = context->saved_data["gate_first"].toBool();
    const at::Tensor& dy = grad_outputs[0];
    // dy comes in the output's dtype; other dtypes (an upstream cast) go to fp32.
    const at::Tensor dy3 = (fp32_or_bf16(dy.scalar_type()) ? dy : dy.to(at::kFloat)).reshape(x3.sizes()).contiguous();
    at::Tensor dx = new_output(x3.sizes(), x3.options());
    at::Tensor dgate = new_output(x3.sizes(), gate3.options());
    const bool weight_gradient = context->needs_input_grad(2);
    at::Tensor terms = weight_gradient ? new_output(x3.sizes(), x3.options()) : at::Tensor();
#ifdef PRIME_WITH_CUDA
    detail::launch_gated_norm_backward(x3, gate3, w, eps, gate_first, dy3, dx, dgate, terms);
#else
    (void)eps, (void)gate_first, (void)dy3;
#endif
    at::Tensor d_weight;
    if (weight_gradient)  // the per-head slices ([H * D]) or every head's rows ([D]) summed
      d_weight = w.size(0) == x3.size(2) ? terms.view({-1, x3.size(2)}).sum(0) : terms.sum(0).view({-1});
    const std::vector<int64_t> sizes = context->saved_data["sizes"].toIntVector();
    return {context->needs_input_grad(0) ? dx.view(sizes) : at::Tensor(),
            context->needs_input_grad(1) ? dgate.view(sizes) : at::Tensor(), d_weight, at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

bool gated_norm_apply(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, at::ScalarType out_type) {
  if (!x.defined() || !gate.defined() || !weight.defined() || !use_cuda_kernels(x)) return false;
  if (x.scalar_type() != at::kFloat || x.dim() < 2 || !fp32_or_bf16(gate.scalar_type()) ||
      !fp32_or_bf16(weight.scalar_type()) || !fp32_or_bf16(out_type) || gate.sizes() != x.sizes() ||
      gate.device() != x.device() || weight.device() != x.device() || weight.dim() != 1)
    return false;
  const int64_t D = x.size(-1), H = x.size(-2);
  return D >= 1 && D <= kGatedNormMaxDim && (weight.size(0) == D || weight.size(0) == H * D);
}

at::Tensor gated_norm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, double eps,
                      GateOrder order, at::ScalarType out_type) {
  PRIME_CHECK(gated_norm_apply(x, gate, weight, out_type), "gated_norm: operands the kernels do not serve (x ",
              x.sizes(), " ", x.scalar_type(), ", gate ", gate.sizes(), " ", gate.scalar_type(), ", weight ",
              weight.sizes(), " ", weight.scalar_type(), ", out ", out_type, "); ask gated_norm_apply first");
  require_cuda_build("gated_norm");
  if (!records_gradient(x) && !records_gradient(gate) && !records_gradient(weight)) {
    // Inference: the weight read in its own dtype (a bf16 model's weight needs no cast launch).
    return forward_rows(as_rows(x), as_rows(gate), weight.contiguous(), eps, order == GateOrder::BeforeNorm, out_type)
        .view(x.sizes());
  }
  return GatedNormKernel::apply(x, gate, weight.to(at::kFloat), eps, order == GateOrder::BeforeNorm, out_type);
}

}  // namespace prime::kernels
