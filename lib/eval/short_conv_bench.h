// Timing of the fused causal short conv + SiLU (kernels/short_conv) against its torch-ops form
// (model::causal_conv then silu), the same inputs in one run, for prime-bench's kernel table.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace prime::eval {

struct ShortConvBenchOptions {
  int64_t batch = 4, tokens = 8192, channels = 4096, kernel_size = 4;
  std::vector<at::ScalarType> dtypes = {at::kBFloat16, at::kFloat};
  int warmup = 2, repeats = 5;
  bool backward = true;
};

// One row per dtype. Traffic floors: forward reads u and writes y (2 B T C elements);
// forward+backward adds reading u and dy and writing du (5 B T C in all). The weight, bias and
// weight-gradient partials are negligible at these shapes.
struct ShortConvBenchRow {
  std::string shape;  // "(B,T,C) dtype K=k"
  double kernel_forward_ms = 0, kernel_forward_backward_ms = 0;
  double torch_forward_ms = 0, torch_forward_backward_ms = 0;  // 0 when not measured
  double kernel_forward_tbps = 0, kernel_forward_backward_tbps = 0;  // floor bytes / time
};

// Needs a CUDA device and a build with the kernels (else a UserError).
std::vector<ShortConvBenchRow> run_short_conv_bench(const ShortConvBenchOptions& options,
                                                    const at::Device& device);

}  // namespace prime::eval
