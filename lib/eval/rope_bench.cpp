#include "eval/rope_bench.h"

#include <ATen/core/grad_mode.h>

#include <functional>
#include <string>

#include "kernels/common/policy.h"
#include "kernels/rope/rope.h"
#include "model/rms_norm.h"
#include "model/rope.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::eval {

namespace {

// Per-call median time in us of `call` queued calls_per_repeat times per timed run.
double eager_us(const std::function<void()>& call, const RopeBenchOptions& options, const at::Device& device) {
  return 1e3 * median_ms_per_call(call, options.calls_per_repeat, device, options.warmup, options.repeats);
}

}  // namespace

std::vector<RopeBenchRow> run_rope_bench(const RopeBenchOptions& options, const at::Device& device) {
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("the RoPE benchmark needs a CUDA device and a build with the CUDA kernels (PRIME_CUDA=ON)");
  at::NoGradGuard no_grad;
  const int64_t Hq = options.query_heads, Hkv = options.kv_heads, D = options.head_dim;
  io::RopeConfig config;
  config.theta = 1000000.0;  // Qwen3's
  const model::Rope rope(config, D, 40960);
  std::vector<RopeBenchRow> rows;
  for (const auto& [B, T] : options.shapes) {
    // q and k as the attention layer gets them: slices of one projection output.
    const at::Tensor projection =
        at::randn({B, T, (Hq + 2 * Hkv) * D}, at::TensorOptions().device(device).dtype(options.dtype));
    const at::Tensor q = projection.narrow(-1, 0, Hq * D).unflatten(-1, {Hq, D});
    const at::Tensor k = projection.narrow(-1, Hq * D, Hkv * D).unflatten(-1, {Hkv, D});
    const int64_t start = 1000;  // fixed: the tables are computed once, the calls time the rotation
    const auto call = [&] { rope.apply(q, k, start); };
    {
      const kernels::ScopedKernelPolicy with_kernels(kernels::Policy::Auto);
      call();
      const at::Tensor cos = at::ones({1, T, 1, D}, q.options().dtype(at::kFloat));
      PRIME_CHECK(kernels::rope_apply(q, k, cos, cos), "RoPE benchmark: the kernel does not serve ", q.sizes());
    }
    RopeBenchRow row;
    row.shape = "(" + std::to_string(B) + "," + std::to_string(T) + ") " + std::to_string(Hq) + "/" +
                std::to_string(Hkv) + "/" + std::to_string(D) + " " + c10::toString(options.dtype);
    row.floor_bytes = 2.0 * B * T * (Hq + Hkv) * D * at::elementSize(options.dtype) + 2.0 * T * D * 4;
    for (const kernels::Policy policy : {kernels::Policy::Auto, kernels::Policy::Torch}) {
      const kernels::ScopedKernelPolicy scoped(policy);
      const bool kernel = policy == kernels::Policy::Auto;
      (kernel ? row.kernel_eager_us : row.torch_eager_us) = eager_us(call, options, device);
      (kernel ? row.kernel_graph_us : row.torch_graph_us) =
          1e3 * graph_ms_per_call(call, options.calls_per_repeat, device, options.warmup, options.repeats);
    }
    row.kernel_graph_gbps = row.floor_bytes / (row.kernel_graph_us * 1e-6) / 1e9;
    row.torch_graph_gbps = row.floor_bytes / (row.torch_graph_us * 1e-6) / 1e9;
    rows.push_back(row);
  }
  return rows;
}

std::vector<RopeNormBenchRow> run_rope_norm_bench(const RopeBenchOptions& options, const at::Device& device) {
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("the RoPE benchmark needs a CUDA device and a build with the CUDA kernels (PRIME_CUDA=ON)");
  at::NoGradGuard no_grad;
  const int64_t Hq = options.query_heads, Hkv = options.kv_heads, D = options.head_dim;
  const double eps = 1e-6;
  io::RopeConfig config;
  config.theta = 1000000.0;
  const model::Rope rope(config, D, 40960);
  const auto on_device = at::TensorOptions().device(device).dtype(options.dtype);
  const at::Tensor position = at::full({1}, 1000, at::TensorOptions().device(device).dtype(at::kLong));
  const at::Tensor q_weight = at::randn({D}, on_device), k_weight = at::randn({D}, on_device);
  std::vector<RopeNormBenchRow> rows;
  for (const auto& [B, T] : options.shapes) {
    if (T != 1) continue;  // the decode step's form
    const at::Tensor q = at::randn({B, 1, Hq, D}, on_device), k = at::randn({B, 1, Hkv, D}, on_device);
    const auto fused = [&] {
      const auto [cos, sin] = rope.angles_at(q, position);
      kernels::rope_norm_rotate(q, k, q_weight, k_weight, eps, cos, sin);
    };
    const auto separate = [&] {
      rope.apply_at(model::rms_norm(q, q_weight, eps), model::rms_norm(k, k_weight, eps), position);
    };
    {
      const auto [cos, sin] = rope.angles_at(q, position);
      PRIME_CHECK(kernels::rope_norm_apply(q, k, q_weight, k_weight, cos, sin),
                  "RoPE benchmark: the fused norm and rotation do not serve ", q.sizes());
    }
    auto graph_us = [&](const std::function<void()>& call) {
      return 1e3 * graph_ms_per_call(call, options.calls_per_repeat, device, options.warmup, options.repeats);
    };
    RopeNormBenchRow row;
    row.shape = "(" + std::to_string(B) + ",1) " + std::to_string(Hq) + "/" + std::to_string(Hkv) + "/" +
                std::to_string(D) + " " + c10::toString(options.dtype);
    {
      const kernels::ScopedKernelPolicy with_kernels(kernels::Policy::Auto);
      row.fused_graph_us = graph_us(fused);
      row.separate_graph_us = graph_us(separate);
    }
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      row.torch_graph_us = graph_us(separate);
    }
    rows.push_back(row);
  }
  return rows;
}

}  // namespace prime::eval
