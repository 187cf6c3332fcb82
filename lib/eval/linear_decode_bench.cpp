#include "eval/linear_decode_bench.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "eval/kernel_vs_torch.h"
#include "kernels/common/policy.h"
#include "kernels/linear_decode/linear_decode.h"
#include "model/linear.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::eval {

std::vector<LinearDecodeBenchRow> run_linear_decode_bench(const LinearDecodeBenchOptions& options,
                                                          const at::Device& device) {
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("the decode projection benchmark needs a CUDA device and a build with the CUDA ",
                     "kernels (PRIME_CUDA=ON)");
  at::NoGradGuard no_grad;
  const auto on_device = at::TensorOptions().device(device).dtype(options.dtype);
  const double element = static_cast<double>(at::elementSize(options.dtype));
  std::vector<LinearDecodeBenchRow> rows;
  for (const LinearDecodeShape& shape : options.shapes) {
    const int64_t N = shape.out_features, K = shape.in_features;
    const double weight_bytes = element * N * K;
    const int64_t copies = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(options.rotate_bytes / weight_bytes)));
    const at::Tensor x = at::randn({shape.rows, K}, on_device);
    std::vector<at::Tensor> weights;
    for (int64_t c = 0; c < copies; ++c) weights.push_back(at::randn({N, K}, on_device) * 0.02);
    PRIME_CHECK(kernels::linear_decode_apply(x, weights.front(), at::Tensor()),
                "decode projection benchmark: the kernel does not serve x ", x.sizes(), " W ", weights.front().sizes());
    size_t next = 0;
    const auto call = [&] {
      model::linear(x, weights[next], at::Tensor());
      next = (next + 1) % weights.size();
    };
    const KernelVsTorch times = time_kernel_vs_torch(call, weight_bytes, options.calls_per_repeat, options.warmup,
                                                     options.repeats, device);
    LinearDecodeBenchRow row;
    row.shape = std::to_string(shape.rows) + " x " + std::to_string(N) + " x " + std::to_string(K) + " " +
                c10::toString(options.dtype);
    row.weight_bytes = weight_bytes;
    row.kernel_ms = times.kernel_ms;
    row.torch_ms = times.torch_ms;
    row.kernel_tbps = times.kernel_tbps;
    row.torch_tbps = times.torch_tbps;
    // Each captured call reads the weight copy it read at capture.
    for (const kernels::Policy policy : {kernels::Policy::Auto, kernels::Policy::Torch}) {
      const kernels::ScopedKernelPolicy scoped(policy);
      (policy == kernels::Policy::Auto ? row.kernel_graph_ms : row.torch_graph_ms) =
          graph_ms_per_call(call, options.calls_per_repeat, device, options.warmup, options.repeats);
    }
    {
      const kernels::ScopedKernelPolicy scoped(kernels::Policy::Auto);
      const kernels::ScopedLinearDecodeGrid per_unit(kernels::LinearDecodeGrid::PerUnit);
      row.kernel_graph_per_unit_ms =
          graph_ms_per_call(call, options.calls_per_repeat, device, options.warmup, options.repeats);
    }
    row.kernel_graph_tbps = weight_bytes / (row.kernel_graph_ms * 1e-3) / 1e12;
    row.kernel_graph_fraction_of_hbm = row.kernel_graph_tbps / options.hbm_tbps;
    rows.push_back(row);
  }
  return rows;
}

std::vector<LinearDecodeGroupBenchRow> run_linear_decode_group_bench(const LinearDecodeGroupBenchOptions& options,
                                                                     const at::Device& device) {
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("the grouped decode projection benchmark needs a CUDA device and a build with the CUDA ",
                     "kernels (PRIME_CUDA=ON)");
  at::NoGradGuard no_grad;
  const LinearDecodeBenchOptions& common = options.common;
  const auto on_device = at::TensorOptions().device(device).dtype(common.dtype);
  const double element = static_cast<double>(at::elementSize(common.dtype));
  const int64_t K = options.hidden;
  const at::Tensor x = at::randn({1, K}, on_device);
  const std::string type = c10::toString(common.dtype);
  std::vector<LinearDecodeGroupBenchRow> rows;

  // Copies of a set of weights, round robin over at least rotate_bytes.
  auto weight_sets = [&](const std::vector<int64_t>& features) {
    double bytes = 0;
    for (const int64_t N : features) bytes += element * N * K;
    const int64_t copies = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(common.rotate_bytes / bytes)));
    std::vector<std::vector<at::Tensor>> sets(copies);
    for (auto& set : sets)
      for (const int64_t N : features) set.push_back(at::randn({N, K}, on_device) * 0.02);
    return std::make_pair(sets, bytes);
  };
  auto graph_ms = [&](const std::function<void()>& call) {
    return graph_ms_per_call(call, common.calls_per_repeat, device, common.warmup, common.repeats);
  };
  // grouped and separate: the two forms of one call over the copies; the torch form is `grouped`
  // under policy Torch (the entry points fall back to the torch ops there).
  auto time_row = [&](LinearDecodeGroupBenchRow row, const std::function<void()>& grouped,
                      const std::function<void()>& separate) {
    {
      const kernels::ScopedKernelPolicy scoped(kernels::Policy::Auto);
      row.grouped_graph_ms = graph_ms(grouped);
      row.separate_graph_ms = graph_ms(separate);
      const kernels::ScopedLinearDecodeGrid per_unit(kernels::LinearDecodeGrid::PerUnit);
      row.grouped_per_unit_graph_ms = graph_ms(grouped);
    }
    {
      const kernels::ScopedKernelPolicy scoped(kernels::Policy::Torch);
      row.torch_graph_ms = graph_ms(grouped);
    }
    row.grouped_tbps = row.weight_bytes / (row.grouped_graph_ms * 1e-3) / 1e12;
    row.grouped_fraction_of_hbm = row.grouped_tbps / common.hbm_tbps;
    rows.push_back(row);
  };

  {
    const auto made = weight_sets(options.qkv_features);
    const std::vector<std::vector<at::Tensor>>& sets = made.first;
    for (const at::Tensor& weight : sets.front())
      PRIME_CHECK(kernels::linear_decode_apply(x, weight, at::Tensor()),
                  "grouped decode projection benchmark: the kernel does not serve x ", x.sizes(), " W ", weight.sizes());
    size_t next = 0;
    const auto grouped = [&] {
      model::linear_group(x, sets[next]);
      next = (next + 1) % sets.size();
    };
    const auto separate = [&] {
      for (const at::Tensor& weight : sets[next]) model::linear(x, weight);
      next = (next + 1) % sets.size();
    };
    LinearDecodeGroupBenchRow row;
    row.what = "q/k/v ";
    for (size_t i = 0; i < options.qkv_features.size(); ++i)
      row.what += (i ? "+" : "") + std::to_string(options.qkv_features[i]);
    row.what += " x " + std::to_string(K) + " " + type;
    row.weight_bytes = made.second;
    time_row(row, grouped, separate);
  }
  {
    const auto made = weight_sets({options.intermediate, options.intermediate});
    const std::vector<std::vector<at::Tensor>>& sets = made.first;
    size_t next = 0;
    const auto grouped = [&] {
      model::gated_linear_silu(x, sets[next][0], sets[next][1]);
      next = (next + 1) % sets.size();
    };
    const auto separate = [&] {
      at::silu(model::linear(x, sets[next][0])) * model::linear(x, sets[next][1]);
      next = (next + 1) % sets.size();
    };
    LinearDecodeGroupBenchRow row;
    row.what = "gate/up+silu " + std::to_string(options.intermediate) + " x " + std::to_string(K) + " " + type;
    row.weight_bytes = made.second;
    time_row(row, grouped, separate);
  }
  return rows;
}

}  // namespace prime::eval
