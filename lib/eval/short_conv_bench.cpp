#include "eval/short_conv_bench.h"

#include <ATen/core/grad_mode.h>

#include <string>
#include <utility>

#include "kernels/common/policy.h"
#include "kernels/short_conv/short_conv.h"
#include "model/ssm_common.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::eval {

namespace {

struct Operands {
  at::Tensor u, weight, bias, grad_y;
};

// Median forward and (when asked) forward+backward time of causal_conv_silu under the policy in
// force; the backward takes u's, the weight's and the bias's gradients, as training does.
std::pair<double, double> time_conv(const Operands& in, const ShortConvBenchOptions& options,
                                    const at::Device& device) {
  double forward_ms = 0, forward_backward_ms = 0;
  {
    at::NoGradGuard no_grad;
    forward_ms = median_ms([&] { model::causal_conv_silu(in.u, in.weight, in.bias, nullptr); },
                           device, options.warmup, options.repeats);
  }
  if (options.backward) {
    forward_backward_ms = median_ms(
        [&] {
          model::causal_conv_silu(in.u, in.weight, in.bias, nullptr).backward(in.grad_y);
          for (const at::Tensor* t : {&in.u, &in.weight, &in.bias})
            const_cast<at::Tensor*>(t)->mutable_grad().reset();
        },
        device, options.warmup, options.repeats);
  }
  return {forward_ms, forward_backward_ms};
}

}  // namespace

std::vector<ShortConvBenchRow> run_short_conv_bench(const ShortConvBenchOptions& options,
                                                    const at::Device& device) {
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("the short conv benchmark needs a CUDA device and a build with the CUDA ",
                     "kernels (PRIME_CUDA=ON)");
  const int64_t B = options.batch, T = options.tokens, C = options.channels, K = options.kernel_size;
  std::vector<ShortConvBenchRow> rows;
  for (at::ScalarType type : options.dtypes) {
    const auto on_device = at::TensorOptions().device(device);
    Operands in;
    in.u = at::randn({B, T, C}, on_device.dtype(type)).requires_grad_(true);
    in.weight = (at::randn({C, 1, K}, on_device) * 0.5).requires_grad_(true);
    in.bias = (at::randn({C}, on_device) * 0.1).requires_grad_(true);
    in.grad_y = at::randn({B, T, C}, on_device.dtype(type));
    PRIME_CHECK(kernels::short_conv_apply(in.u, in.weight, at::Tensor()),
                "short conv benchmark: the kernel does not serve ", c10::toString(type));
    ShortConvBenchRow row;
    row.shape = "(" + std::to_string(B) + "," + std::to_string(T) + "," + std::to_string(C) + ") " +
                c10::toString(type) + " K=" + std::to_string(K);
    {
      const kernels::ScopedKernelPolicy with_kernels(kernels::Policy::Auto);
      std::tie(row.kernel_forward_ms, row.kernel_forward_backward_ms) = time_conv(in, options, device);
    }
    {
      const kernels::ScopedKernelPolicy torch_ops(kernels::Policy::Torch);
      std::tie(row.torch_forward_ms, row.torch_forward_backward_ms) = time_conv(in, options, device);
    }
    const double bytes = static_cast<double>(B) * T * C * at::elementSize(type);
    row.kernel_forward_tbps = 2 * bytes / (row.kernel_forward_ms * 1e-3) / 1e12;
    if (row.kernel_forward_backward_ms > 0)
      row.kernel_forward_backward_tbps = 5 * bytes / (row.kernel_forward_backward_ms * 1e-3) / 1e12;
    rows.push_back(row);
  }
  return rows;
}

}  // namespace prime::eval
