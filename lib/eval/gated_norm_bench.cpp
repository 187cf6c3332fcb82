#include "eval/gated_norm_bench.h"

#include <ATen/core/grad_mode.h>

#include <functional>
#include <string>

#include "eval/kernel_vs_torch.h"
#include "kernels/common/policy.h"
#include "kernels/gated_norm/gated_norm.h"
#include "model/rms_norm.h"
#include "util/error.h"

namespace prime::eval {

namespace {

constexpr double kEps = 1e-6;

}  // namespace

std::vector<GatedNormBenchRow> run_gated_norm_bench(const GatedNormBenchOptions& options, const at::Device& device) {
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("the gated norm benchmark needs a CUDA device and a build with the CUDA kernels (PRIME_CUDA=ON)");
  const int64_t T = options.tokens, H = options.heads, D = options.head_dim;
  const auto fp32 = at::TensorOptions().device(device).dtype(at::kFloat);
  at::Tensor x = at::randn({T, H, D}, fp32).requires_grad_(true);
  const at::Tensor dy = at::randn({T, H, D}, fp32).to(at::kBFloat16);
  const double elements = static_cast<double>(T * H * D);
  std::vector<GatedNormBenchRow> rows;
  for (const bool gate_first : {false, true}) {
    at::Tensor gate = at::randn({T, H, D}, fp32).to(gate_first ? at::kFloat : at::kBFloat16).requires_grad_(true);
    at::Tensor weight = (1 + 0.1 * at::randn({gate_first ? H * D : D}, fp32)).requires_grad_(true);
    PRIME_CHECK(kernels::gated_norm_apply(x, gate, weight, at::kBFloat16), "gated norm benchmark: the kernel does not serve ",
                x.sizes());
    const auto norm = [&] {
      return gate_first ? model::rms_norm_of_gated(x, gate, weight, kEps, at::kBFloat16)
                        : model::gated_rms_norm(x, gate, weight, kEps, at::kBFloat16);
    };
    const double gate_bytes = static_cast<double>(gate.element_size()) * elements;
    const double forward_bytes = 4 * elements + gate_bytes + 2 * elements;
    // Backward: x, the gate and dy read; dx, dgate and the weight's terms written, the terms read.
    const double backward_bytes = 4 * elements + gate_bytes + 2 * elements + 4 * elements + gate_bytes + 8 * elements;
    const std::string shape = std::to_string(T) + " x " + std::to_string(H) + " x " + std::to_string(D);
    const std::string name = gate_first ? "gate, norm (M2)" : "norm, gate (GDN)";
    const auto add = [&](const std::string& op, double bytes, const std::function<void()>& call) {
      const KernelVsTorch times =
          time_kernel_vs_torch(call, bytes, options.calls_per_repeat, options.warmup, options.repeats, device);
      rows.push_back({shape, name + " " + op, bytes, times.kernel_ms, times.torch_ms, times.kernel_tbps,
                      times.torch_tbps});
    };
    add("fwd", forward_bytes, [&] {
      at::NoGradGuard no_grad;
      norm();
    });
    add("fwd+bwd", forward_bytes + backward_bytes, [&] {
      const at::AutoGradMode grad_mode(true);
      norm().backward(dy);
      for (at::Tensor* t : {&x, &gate, &weight}) t->mutable_grad() = at::Tensor();
    });
  }
  return rows;
}

}  // namespace prime::eval
