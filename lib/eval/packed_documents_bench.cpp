#include "eval/packed_documents_bench.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <utility>

#include "convert/model_spec.h"
#include "model/documents.h"
#include "model/hybrid_model.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::eval {

namespace {

// Document positions [B, T]: log-uniform lengths, each row filled to T (its last one cut short).
at::Tensor ragged_positions(const PackedDocumentsBenchOptions& o, int64_t* documents) {
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

// "synthetic:qwen3-0.6b@...+convert:TYPE:1:1": one attention layer and one layer of `type`.
std::string layer_spec(const PackedDocumentsBenchOptions& o) {
  const std::string n = std::to_string(o.heads);
  return "synthetic:qwen3-0.6b@layers=2,hidden=" + std::to_string(o.hidden) + ",heads=" + n + ",kv_heads=" + n +
         ",head_dim=" + std::to_string(o.head_dim) + ",intermediate=64,vocab=64,seed=" + std::to_string(o.seed) +
         "+convert:" + o.type + ":1:1";
}

// Median forward and forward+backward time of `forward` on x (every weight's gradient too).
std::pair<double, double> time_path(const std::function<at::Tensor()>& forward, const at::Tensor& grad,
                                    const model::TensorMap& weights, const at::Tensor& x,
                                    const PackedDocumentsBenchOptions& o, const at::Device& device) {
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

PackedDocumentsBenchRow run_packed_documents_bench(const PackedDocumentsBenchOptions& o, const at::Device& device) {
  if (o.type != "GDN" && o.type != "GKA" && o.type != "M2")
    throw user_error("packed-documents benchmark: unknown SSM type '", o.type, "' (GDN, GKA, M2)");
  at::manual_seed(static_cast<int64_t>(o.seed));
  int64_t documents_count = 0;
  const model::Documents documents = model::make_documents(ragged_positions(o, &documents_count), device);
  model::LoadOptions load;
  load.device = device;
  load.dtype = at::kBFloat16;
  convert::SpecWeights spec = convert::load_spec_weights(layer_spec(o), load);
  int64_t layer = 0;
  while (layer < 2 && spec.config.layer_pattern.at(layer) == "*") ++layer;
  if (layer == 2) throw internal_error("packed-documents benchmark: no ", o.type, " layer in ", layer_spec(o));
  // Every weight of the converted layer trains (its prefix is the layer's own).
  const std::string prefix = "model.layers." + std::to_string(layer) + ".";
  model::TensorMap weights;
  for (auto& [name, tensor] : spec.weights)
    if (name.rfind(prefix, 0) == 0 && at::isFloatingType(tensor.scalar_type()))
      weights[name] = tensor.requires_grad_(true);
  model::HybridModel hybrid(spec.config, spec.weights);
  model::Mixer& mixer = hybrid.mixer(layer);
  const auto on_device = at::TensorOptions().device(device).dtype(at::kBFloat16);
  const at::Tensor x = at::randn({o.batch, o.tokens, o.hidden}, on_device).requires_grad_(true);
  const at::Tensor grad = at::randn({o.batch, o.tokens, o.hidden}, on_device);

  PackedDocumentsBenchRow row;
  row.type = o.type;
  row.shape = "(" + std::to_string(o.batch) + "," + std::to_string(o.tokens) + "," + std::to_string(o.hidden) +
              "," + std::to_string(o.heads) + "," + std::to_string(o.head_dim) + ") bf16, " +
              std::to_string(documents_count) + " documents";
  double bucket_tokens = 0;
  for (const model::Documents::Bucket& bucket : documents.buckets) bucket_tokens += bucket.count * bucket.length;
  const double tokens = static_cast<double>(o.batch * o.tokens);
  row.bucket_tokens = bucket_tokens / tokens;
  // Every packed path here lays documents out in chunks of 64 (GDN's and GKA's default chunk,
  // Mamba-2's min(chunk_size, 64)).
  const int64_t chunk = 64;
  row.chunk_tokens = documents.chunks(chunk).count * chunk / tokens;
  std::tie(row.packed_forward_ms, row.packed_forward_backward_ms) =
      time_path([&] { return mixer.forward_documents(x, documents); }, grad, weights, x, o, device);
  std::tie(row.bucketed_forward_ms, row.bucketed_forward_backward_ms) = time_path(
      [&] { return mixer.model::Mixer::forward_documents(x, documents); }, grad, weights, x, o, device);
  return row;
}

}  // namespace prime::eval
