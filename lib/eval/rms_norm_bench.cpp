#include "eval/rms_norm_bench.h"

#include <ATen/core/grad_mode.h>

#include <functional>
#include <string>

#include "eval/kernel_vs_torch.h"
#include "kernels/common/policy.h"
#include "kernels/rms_norm/rms_norm.h"
#include "model/rms_norm.h"
#include "util/error.h"

namespace prime::eval {

namespace {

constexpr double kEps = 1e-6;

RmsNormBenchRow measure(const std::string& shape, const std::string& op, double bytes,
                        const std::function<void()>& call, const RmsNormBenchOptions& options,
                        const at::Device& device) {
  const KernelVsTorch times =
      time_kernel_vs_torch(call, bytes, options.calls_per_repeat, options.warmup, options.repeats, device);
  RmsNormBenchRow row;
  row.shape = shape;
  row.op = op;
  row.bytes = bytes;
  row.kernel_ms = times.kernel_ms;
  row.torch_ms = times.torch_ms;
  row.kernel_tbps = times.kernel_tbps;
  row.torch_tbps = times.torch_tbps;
  return row;
}

}  // namespace

std::vector<RmsNormBenchRow> run_rms_norm_bench(const RmsNormBenchOptions& options,
                                                const at::Device& device) {
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("the RMSNorm benchmark needs a CUDA device and a build with the CUDA ",
                     "kernels (PRIME_CUDA=ON)");
  at::NoGradGuard no_grad;
  const auto on_device = at::TensorOptions().device(device).dtype(options.dtype);
  const double element = static_cast<double>(at::elementSize(options.dtype));
  std::vector<RmsNormBenchRow> rows;
  for (const auto& [R, D] : options.shapes) {
    const at::Tensor x = at::randn({R, D}, on_device), residual = at::randn({R, D}, on_device);
    const at::Tensor weight = 1 + 0.1 * at::randn({D}, on_device);
    PRIME_CHECK(kernels::add_rms_norm_apply(x, residual, weight),
                "RMSNorm benchmark: the kernel does not serve ", x.sizes());
    const std::string shape = std::to_string(R) + " x " + std::to_string(D) + " " +
                              c10::toString(options.dtype);
    const double weight_bytes = element * D, row_bytes = element * R * D;
    rows.push_back(measure(shape, "norm", 2 * row_bytes + weight_bytes,
                           [&] { model::rms_norm(x, weight, kEps); }, options, device));
    rows.push_back(measure(shape, "add+norm", 4 * row_bytes + weight_bytes,
                           [&] { model::add_rms_norm(x, residual, weight, kEps); }, options, device));
    // Training: the kernels' autograd function against the torch form's graph.
    const at::Tensor trained = x.detach().clone().requires_grad_(true);
    rows.push_back(measure(shape, "fwd+bwd", 5 * row_bytes + 2 * weight_bytes,
                           [&] {
                             const at::AutoGradMode grad_mode(true);
                             model::rms_norm(trained, weight, kEps).backward(residual);
                             trained.mutable_grad() = at::Tensor();
                           },
                           options, device));
  }
  return rows;
}

}  // namespace prime::eval
