// Seeded random float64 weights for the mixer references, named as ssm_reference.h expects.
// Header-only so any test can build weights for a reference comparison. Scales keep every
// activation O(1) (Linear ~ N(0, 1/in)) and decays in the useful range (HMF's A_log / dt_bias
// initialisation), so no comparison is dominated by saturated gates.
#pragma once

#include "reference/ssm_reference.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace prime::reference::testing {

inline at::Tensor random_normal(const std::vector<int64_t>& shape, double stddev,
                                std::mt19937_64& rng) {
  at::Tensor t = at::empty(shape, at::kDouble);
  std::normal_distribution<double> normal(0.0, stddev);
  double* data = t.data_ptr<double>();
  for (int64_t i = 0; i < t.numel(); ++i) data[i] = normal(rng);
  return t;
}

inline at::Tensor random_uniform(const std::vector<int64_t>& shape, double low, double high,
                                 std::mt19937_64& rng) {
  at::Tensor t = at::empty(shape, at::kDouble);
  std::uniform_real_distribution<double> uniform(low, high);
  double* data = t.data_ptr<double>();
  for (int64_t i = 0; i < t.numel(); ++i) data[i] = uniform(rng);
  return t;
}

// [out, in] with N(0, 1/in) entries.
inline at::Tensor random_linear(int64_t out, int64_t in, std::mt19937_64& rng) {
  return random_normal({out, in}, 1.0 / std::sqrt(static_cast<double>(in)), rng);
}

// A_log = log U(1,16); dt_bias = softplus^-1(dt), dt log-uniform in [1e-3, 0.1].
inline void add_decay_parameters(Weights& w, int64_t heads, std::mt19937_64& rng) {
  at::Tensor A_log = random_uniform({heads}, 1.0, 16.0, rng);
  at::Tensor dt_bias = random_uniform({heads}, std::log(1e-3), std::log(0.1), rng);
  double* a = A_log.data_ptr<double>();
  double* dt = dt_bias.data_ptr<double>();
  for (int64_t h = 0; h < heads; ++h) {
    a[h] = std::log(a[h]);
    const double step = std::exp(dt[h]);
    dt[h] = step + std::log(-std::expm1(-step));
  }
  w["A_log"] = A_log;
  w["dt_bias"] = dt_bias;
}

inline at::Tensor random_conv(int64_t channels, std::mt19937_64& rng) {
  return random_normal({channels, 1, 4}, 0.5, rng);
}

inline Weights random_gka_weights(const GkaDims& dims, std::mt19937_64& rng) {
  const int64_t d = dims.hidden, D = dims.head_dim, Hq = dims.num_q_heads,
                Hk = dims.k_heads(), Hv = dims.v_heads(), H = std::max({Hq, Hk, Hv});
  Weights w;
  w["q_proj.weight"] = random_linear(Hq * D, d, rng);
  w["k_proj.weight"] = random_linear(Hk * D, d, rng);
  w["v_proj.weight"] = random_linear(Hv * D, d, rng);
  w["a_proj.weight"] = random_linear(H, d, rng);
  w["b_proj.weight"] = random_linear(H, d, rng);
  w["b_proj.bias"] = random_normal({H}, 0.5, rng);
  if (dims.use_alpha_connection) {
    w["alpha_proj.weight"] = random_linear(H, d, rng);
    w["alpha_proj.bias"] = random_normal({H}, 0.5, rng);
  }
  add_decay_parameters(w, H, rng);
  w["q_conv1d.weight"] = random_conv(Hq * D, rng);
  w["k_conv1d.weight"] = random_conv(Hk * D, rng);
  if (dims.use_v_conv) w["v_conv1d.weight"] = random_conv(Hv * D, rng);
  w["g_proj.weight"] = random_linear(H * D, d, rng);
  w["o_norm.weight"] = random_uniform({D}, 0.5, 1.5, rng);
  w["o_proj.weight"] = random_linear(d, H * D, rng);
  return w;
}

// Every optional tensor too (conv biases last, so the other draws do not depend on them).
inline Weights random_gdn_weights(const GdnDims& dims, std::mt19937_64& rng) {
  const int64_t d = dims.hidden, D = dims.head_dim, Hq = dims.num_q_heads,
                Hk = dims.k_heads(), Hv = dims.v_heads(), H = std::max({Hq, Hk, Hv});
  Weights w;
  w["q_proj.weight"] = random_linear(Hq * D, d, rng);
  w["k_proj.weight"] = random_linear(Hk * D, d, rng);
  w["v_proj.weight"] = random_linear(Hv * D, d, rng);
  w["b_proj.weight"] = random_linear(H, d, rng);
  w["gk_proj.weight"] = random_linear(H, d, rng);
  add_decay_parameters(w, H, rng);
  w["q_conv1d.weight"] = random_conv(Hq * D, rng);
  w["k_conv1d.weight"] = random_conv(Hk * D, rng);
  w["v_conv1d.weight"] = random_conv(Hv * D, rng);
  w["g_proj.weight"] = random_linear(H * D, d, rng);
  w["o_norm.weight"] = random_uniform({D}, 0.5, 1.5, rng);
  w["o_proj.weight"] = random_linear(d, H * D, rng);
  if (dims.conv_bias) {
    w["q_conv1d.bias"] = random_normal({Hq * D}, 0.2, rng);
    w["k_conv1d.bias"] = random_normal({Hk * D}, 0.2, rng);
    w["v_conv1d.bias"] = random_normal({Hv * D}, 0.2, rng);
  }
  return w;
}

inline Weights random_mamba2_weights(const Mamba2Dims& dims, std::mt19937_64& rng) {
  const int64_t d = dims.hidden, D = dims.head_dim, Hq = dims.num_q_heads,
                Hkv = dims.num_kv_heads, H = std::max(Hq, Hkv);
  Weights w;
  w["in_proj.weight"] = random_linear(2 * Hq * D + 2 * Hkv * D + H, d, rng);
  w["B_norm.weight"] = random_uniform({D}, 0.5, 1.5, rng);
  w["C_norm.weight"] = random_uniform({D}, 0.5, 1.5, rng);
  w["conv1d.weight"] = random_conv((2 * Hkv + Hq) * D, rng);
  w["conv1d.bias"] = random_normal({(2 * Hkv + Hq) * D}, 0.2, rng);
  add_decay_parameters(w, H, rng);
  w["D"] = random_uniform({H}, 0.5, 1.5, rng);
  w["norm.weight"] = random_uniform({H * D}, 0.5, 1.5, rng);
  w["out_proj.weight"] = random_linear(d, H * D, rng);
  return w;
}

}  // namespace prime::reference::testing
