#include "eval/gdn_varlen_bench.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <utility>

#include "model/documents.h"
#include "model/gdn.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::eval {

namespace {

// Document positions [B, T]: log-uniform lengths, each row filled to T (its last one cut short).
at::Tensor ragged_positions(const GdnVarlenBenchOptions& o, int64_t* documents) {
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> log_length(std::log(static_cast<double>(o.min_length)),
                                                    std::log(static_cast<double>(o.max_length)));
  at::Tensor positions = at::empty({o.batch, o.tokens}, at::kLong);
  int64_t* p = positions.data_ptr<int64_t>();
  *documents = 0;
  for (int64_t row = 0; row < o.batch; ++row) {
    for (int64_t t = 0; t < o.tokens; ++(*documents)) {
      const int64_t length = std::min(static_cast<int64_t>(std::exp(log_length(rng))), o.tokens - t);
      for (int64_t i = 0; i < length; ++i) p[row * o.tokens + t + i] = i;
      t += length;
    }
  }
  return positions;
}

model::TensorMap random_gdn_layer(const GdnVarlenBenchOptions& o, const std::string& prefix,
                                  const at::Device& device) {
  const auto options = at::TensorOptions().device(device).dtype(at::kBFloat16);
  const int64_t hidden = o.hidden, width = o.heads * o.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hidden));
  model::TensorMap map;
  const auto linear = [&](const char* name, int64_t rows, int64_t columns, double s) {
    map[prefix + name] = (at::randn({rows, columns}, options) * s).requires_grad_(true);
  };
  for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight"})
    linear(name, width, hidden, scale);
  linear("b_proj.weight", o.heads, hidden, scale);
  linear("gk_proj.weight", o.heads, hidden, scale);
  linear("o_proj.weight", hidden, width, 1.0 / std::sqrt(static_cast<double>(width)));
  for (const char* name : {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"})
    map[prefix + name] = (at::randn({width, 1, 4}, options) * 0.5).requires_grad_(true);
  map[prefix + "A_log"] = at::zeros({o.heads}, options).requires_grad_(true);
  map[prefix + "dt_bias"] = at::zeros({o.heads}, options).requires_grad_(true);
  map[prefix + "o_norm.weight"] = at::ones({o.head_dim}, options).requires_grad_(true);
  return map;
}

// Median forward and forward+backward time of `forward` on x (every weight's gradient too).
std::pair<double, double> time_path(const std::function<at::Tensor()>& forward, const at::Tensor& grad,
                                    const model::TensorMap& weights, const at::Tensor& x,
                                    const GdnVarlenBenchOptions& o, const at::Device& device) {
  double forward_ms = 0, forward_backward_ms = 0;
  {
    at::NoGradGuard no_grad;
    forward_ms = median_ms([&] { forward(); }, device, o.warmup, o.repeats);
  }
  if (o.backward) {
    forward_backward_ms = median_ms(
        [&] {
          forward().backward(grad);
          for (const auto& [name, tensor] : weights) const_cast<at::Tensor&>(tensor).mutable_grad().reset();
          const_cast<at::Tensor&>(x).mutable_grad().reset();
        },
        device, o.warmup, o.repeats);
  }
  return {forward_ms, forward_backward_ms};
}

}  // namespace

GdnVarlenBenchRow run_gdn_varlen_bench(const GdnVarlenBenchOptions& o, const at::Device& device) {
  if (!device.is_cuda()) throw user_error("the GDN packed-documents benchmark needs a CUDA device");
  at::manual_seed(static_cast<int64_t>(o.seed));
  int64_t documents_count = 0;
  const model::Documents documents = model::make_documents(ragged_positions(o, &documents_count), device);
  const std::string prefix = "model.layers.0.gdn.";
  const model::TensorMap weights = random_gdn_layer(o, prefix, device);
  model::GdnConfig config(o.hidden, o.head_dim, o.heads, o.heads);
  model::GdnMixer mixer(config, weights, prefix);
  const auto on_device = at::TensorOptions().device(device).dtype(at::kBFloat16);
  const at::Tensor x = at::randn({o.batch, o.tokens, o.hidden}, on_device).requires_grad_(true);
  const at::Tensor grad = at::randn({o.batch, o.tokens, o.hidden}, on_device);

  GdnVarlenBenchRow row;
  row.shape = "(" + std::to_string(o.batch) + "," + std::to_string(o.tokens) + "," + std::to_string(o.hidden) +
              "," + std::to_string(o.heads) + "," + std::to_string(o.head_dim) + ") bf16, " +
              std::to_string(documents_count) + " documents";
  double bucket_tokens = 0;
  for (const model::Documents::Bucket& bucket : documents.buckets) bucket_tokens += bucket.count * bucket.length;
  const double tokens = static_cast<double>(o.batch * o.tokens);
  row.bucket_tokens = bucket_tokens / tokens;
  row.chunk_tokens = documents.chunks(config.chunk_size).count * config.chunk_size / tokens;
  std::tie(row.packed_forward_ms, row.packed_forward_backward_ms) =
      time_path([&] { return mixer.forward_documents(x, documents); }, grad, weights, x, o, device);
  std::tie(row.bucketed_forward_ms, row.bucketed_forward_backward_ms) = time_path(
      [&] { return mixer.model::Mixer::forward_documents(x, documents); }, grad, weights, x, o, device);
  return row;
}

}  // namespace prime::eval
