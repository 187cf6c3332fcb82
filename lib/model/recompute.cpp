#include "model/recompute.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace prime::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Recompute : public torch::autograd::Function<Recompute> {
  static at::Tensor forward(AutogradContext* context, const at::Tensor& input,
                            std::function<at::Tensor(const at::Tensor&)> fn) {
    context->save_for_backward({input});
    context->saved_data["fn"] = c10::IValue::make_capsule(c10::make_intrusive<FnHolder>(std::move(fn)));
    at::NoGradGuard no_grad;
    return fn_of(context)(input);
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const at::Tensor input = context->get_saved_variables()[0].detach().requires_grad_(true);
    at::Tensor output;
    {
      at::AutoGradMode enable(true);
      output = fn_of(context)(input);
    }
    torch::autograd::backward({output}, {grad_outputs[0]});
    return {input.grad(), at::Tensor()};
  }

  struct FnHolder : torch::CustomClassHolder {
    explicit FnHolder(std::function<at::Tensor(const at::Tensor&)> f) : fn(std::move(f)) {}
    std::function<at::Tensor(const at::Tensor&)> fn;
  };
  static const std::function<at::Tensor(const at::Tensor&)>& fn_of(AutogradContext* context) {
    auto capsule = context->saved_data.at("fn").toCapsule();
    return static_cast<FnHolder*>(capsule.get())->fn;
  }
};

}  // namespace

at::Tensor recompute_in_backward(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& input) {
  // The output must require grad whenever the piece's parameters do, even when the input does
  // not (the first layer after a frozen embedding): give the function an input that does.
  const at::Tensor entry = input.requires_grad() ? input : input.detach().requires_grad_(true);
  return Recompute::apply(entry, std::move(fn));
}

}  // namespace prime::model
