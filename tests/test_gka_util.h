// Helpers for the GKA tests: configs, seeded random weights with realistic magnitudes, error
// metrics. Test-only.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "model/gka.h"
#include "reference/ssm_reference.h"

namespace prime::test_gka {

inline const std::string kPrefix = "model.layers.3.gka.";

struct Shape {
  int64_t hidden = 32, head_dim = 8, q_heads = 4, kv_heads = 4;
};

inline nlohmann::json config_json(const Shape& shape) {
  return {{"hidden_size", shape.hidden}, {"head_dim", shape.head_dim},
          {"num_q_heads", shape.q_heads}, {"num_k_heads", shape.kv_heads},
          {"num_v_heads", shape.kv_heads}};
}

inline model::GkaConfig make_config(const Shape& shape, const nlohmann::json& overrides = {}) {
  nlohmann::json json = config_json(shape);
  if (overrides.is_object())
    for (const auto& item : overrides.items()) json[item.key()] = item.value();
  return model::GkaConfig::from_json(json, "layer 3");
}

// Every tensor a GKA layer can have, float64, seeded. A and dt follow HMF's init ranges; the
// projections are scaled so gates are spread over (0,1) and decays vary per token.
inline model::TensorMap random_weights(const model::GkaConfig& config, uint64_t seed) {
  at::manual_seed(static_cast<int64_t>(seed));
  const int64_t d = config.hidden_size, D = config.head_dim, H = config.num_heads();
  const int64_t q_dim = config.num_q_heads * D, k_dim = config.num_k_heads * D,
                v_dim = config.num_v_heads * D, K = config.conv_size;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto normal = [&](std::vector<int64_t> shape, double std) { return at::randn(shape, f64) * std; };
  const double in_std = 1.0 / std::sqrt(static_cast<double>(d));
  model::TensorMap w;
  w[kPrefix + "q_proj.weight"] = normal({q_dim, d}, in_std);
  w[kPrefix + "k_proj.weight"] = normal({k_dim, d}, in_std);
  w[kPrefix + "v_proj.weight"] = normal({v_dim, d}, in_std);
  w[kPrefix + "a_proj.weight"] = normal({H, d}, in_std);
  w[kPrefix + "b_proj.weight"] = normal({H, d}, in_std);
  w[kPrefix + "b_proj.bias"] = normal({H}, 0.5);
  w[kPrefix + "alpha_proj.weight"] = normal({H, d}, in_std);
  w[kPrefix + "alpha_proj.bias"] = normal({H}, 0.5);
  // A ~ U(0.5, 4) (a milder slice of HMF's U(0,16) so states carry across chunks);
  // dt = exp(U(ln 1e-3, ln 0.1)), dt_bias = inverse softplus(dt).
  w[kPrefix + "A_log"] = at::log(at::rand({H}, f64) * 3.5 + 0.5);
  const at::Tensor dt = at::exp(at::rand({H}, f64) * (std::log(0.1) - std::log(1e-3)) + std::log(1e-3));
  w[kPrefix + "dt_bias"] = dt + at::log(-at::expm1(-dt));
  w[kPrefix + "q_conv1d.weight"] = normal({q_dim, 1, K}, 0.5);
  w[kPrefix + "k_conv1d.weight"] = normal({k_dim, 1, K}, 0.5);
  w[kPrefix + "v_conv1d.weight"] = normal({v_dim, 1, K}, 0.5);
  w[kPrefix + "g_proj.weight"] = normal({H * D, d}, in_std);
  w[kPrefix + "o_norm.weight"] = 1.0 + normal({D}, 0.1);
  w[kPrefix + "o_proj.weight"] = normal({d, H * D}, 1.0 / std::sqrt(static_cast<double>(H * D)));
  return w;
}

inline model::TensorMap cast_weights(const model::TensorMap& weights, at::ScalarType type,
                                     at::Device device = at::kCPU) {
  model::TensorMap out;
  for (const auto& [name, tensor] : weights) out[name] = tensor.to(device, type);
  return out;
}

// The reference wants prefix-relative names.
inline reference::Weights reference_weights(const model::TensorMap& weights) {
  reference::Weights out;
  for (const auto& [name, tensor] : weights)
    out[name.substr(kPrefix.size())] = tensor.to(at::kDouble).contiguous();
  return out;
}

inline reference::GkaDims reference_dims(const model::GkaConfig& config) {
  reference::GkaDims dims;
  dims.hidden = config.hidden_size;
  dims.head_dim = config.head_dim;
  dims.num_q_heads = config.num_q_heads;
  dims.num_kv_heads = config.num_k_heads;
  dims.num_k_heads = config.num_k_heads;
  dims.num_v_heads = config.num_v_heads;
  dims.use_alpha_connection = config.use_alpha_connection;
  dims.use_forgetting_gate = config.use_forgetting_gate;
  dims.use_forgetting_gate_kk = config.use_forgetting_gate_kk;
  dims.use_beta_gate = config.use_beta_gate;
  dims.use_gate = config.use_gate;
  dims.gla_rescale = config.gla_rescale;
  dims.use_v_conv = config.use_v_conv;
  dims.ridge_solve = config.num_iter > 0;
  dims.num_iter = config.num_iter;
  dims.ridge_strength = config.ridge_strength;
  dims.norm_eps = config.norm_eps;
  return dims;
}

inline at::Tensor random_input(int64_t batch, int64_t tokens, int64_t hidden, uint64_t seed) {
  at::manual_seed(static_cast<int64_t>(seed));
  return at::randn({batch, tokens, hidden}, at::kDouble);
}

// max|a - b| / max|b|, in float64.
inline double rel_error(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor a64 = a.detach().to(at::kCPU, at::kDouble);
  const at::Tensor b64 = b.detach().to(at::kCPU, at::kDouble);
  return (a64 - b64).abs().max().item<double>() / b64.abs().max().item<double>();
}

// Bytes allocated (current and peak) on one device type by the calling thread while installed
// as the profiler's memory reporter (c10::DebugInfoGuard with DebugInfoKind::PROFILER_STATE):
// the CPU and CUDA allocators report every allocation and free to it.
struct AllocationMeter : c10::MemoryReportingInfoBase {
  int64_t current = 0, peak = 0;
  c10::DeviceType device;
  explicit AllocationMeter(c10::DeviceType type) : device(type) {}
  void reportMemoryUsage(void*, int64_t size, size_t, size_t, c10::Device where) override {
    if (where.type() != device) return;
    current += size;
    peak = std::max(peak, current);
  }
  bool memoryProfilingEnabled() const override { return true; }
};

}  // namespace prime::test_gka
