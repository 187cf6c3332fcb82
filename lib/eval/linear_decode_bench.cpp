#include "eval/linear_decode_bench.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

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
    row.kernel_graph_tbps = weight_bytes / (row.kernel_graph_ms * 1e-3) / 1e12;
    row.kernel_graph_fraction_of_hbm = row.kernel_graph_tbps / options.hbm_tbps;
    rows.push_back(row);
  }
  return rows;
}

}  // namespace prime::eval
