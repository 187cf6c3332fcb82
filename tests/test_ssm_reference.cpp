// Checks of the float64 references themselves: the Chebyshev solver against Eigen's direct
// solve, and GKA / GDN against closed forms worked out by hand here with LibTorch ops (a
// different code path from the references' loops). Mamba-2, GQA and causality:
// test_ssm_reference_mamba2.cpp.
#include <catch2/catch.hpp>

#include <Eigen/Dense>

#include "reference/random_weights.h"
#include "reference/ssm_reference.h"

#include <cmath>
#include <cstdio>
#include <random>

namespace ref = prime::reference;
using ref::testing::random_gdn_weights;
using ref::testing::random_gka_weights;
using ref::testing::random_normal;

namespace {

double relative_max_error(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual - expected).abs().max().item<double>() / expected.abs().max().item<double>();
}

// Depthwise causal conv (last tap = current token) then SiLU, through at::conv1d.
// u [T,C], weight [C,1,K] -> [T,C].
at::Tensor conv_silu(const at::Tensor& u, const at::Tensor& weight) {
  const int64_t tokens = u.size(0), channels = u.size(1), kernel = weight.size(2);
  at::Tensor y = at::conv1d(u.t().unsqueeze(0), weight, {}, 1, kernel - 1, 1, channels);
  return at::silu(y.squeeze(0).narrow(1, 0, tokens).t());
}

at::Tensor rms_norm(const at::Tensor& v, const at::Tensor& weight, double eps) {
  return v * at::rsqrt(v.pow(2).mean(-1, true) + eps) * weight;
}

// ---- Chebyshev -------------------------------------------------------------------------------

// Two kinds of SPD-after-ridge matrices: a full-rank Wishart A A^T / D, and what GKA really
// accumulates: a decayed sum of D/2 outer products of unit vectors (rank-deficient PSD).
Eigen::MatrixXd random_psd(int64_t D, bool low_rank, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  if (!low_rank) {
    Eigen::MatrixXd A(D, D);
    for (int64_t i = 0; i < D * D; ++i) A.data()[i] = normal(rng);
    return A * A.transpose() / static_cast<double>(D);
  }
  Eigen::MatrixXd H = Eigen::MatrixXd::Zero(D, D);
  for (int64_t s = 0; s < D / 2; ++s) {
    Eigen::VectorXd k(D);
    for (int64_t i = 0; i < D; ++i) k[i] = normal(rng);
    k.normalize();
    H = 0.95 * H + k * k.transpose();
  }
  return H;
}

}  // namespace

TEST_CASE("chebyshev_solve approaches the direct ridge solve as N grows", "[reference]") {
  std::mt19937_64 rng(20240611);
  std::normal_distribution<double> normal(0.0, 1.0);
  const int iteration_counts[3] = {10, 20, 30};
  double worst[3] = {0.0, 0.0, 0.0};
  std::printf("chebyshev_solve max relative error vs Eigen LDLT, lambda = 0.02 ||H||_F\n");
  std::printf("%5s %-9s %5s %10s %10s %10s\n", "D", "H", "trial", "N=10", "N=20", "N=30");
  for (int64_t D : {32, 128}) {
    for (bool low_rank : {false, true}) {
      for (int trial = 0; trial < 3; ++trial) {
        const Eigen::MatrixXd H = random_psd(D, low_rank, rng);
        const double frob_norm = H.norm();  // Frobenius for a matrix
        const double lambda = 0.02 * frob_norm;
        Eigen::VectorXd q(D);
        for (int64_t i = 0; i < D; ++i) q[i] = normal(rng);
        const Eigen::MatrixXd system = H + lambda * Eigen::MatrixXd::Identity(D, D);
        const Eigen::VectorXd direct = system.ldlt().solve(q);

        std::vector<double> h_row_major(static_cast<size_t>(D * D));
        for (int64_t i = 0; i < D; ++i)
          for (int64_t j = 0; j < D; ++j) h_row_major[i * D + j] = H(i, j);
        const std::vector<double> q_vector(q.data(), q.data() + D);
        double errors[3];
        for (int n = 0; n < 3; ++n) {
          const std::vector<double> x =
              ref::chebyshev_solve(h_row_major, D, lambda, frob_norm, q_vector,
                                   iteration_counts[n]);
          errors[n] = (Eigen::Map<const Eigen::VectorXd>(x.data(), D) - direct).norm() /
                      direct.norm();
          worst[n] = std::max(worst[n], errors[n]);
        }
        std::printf("%5lld %-9s %5d %10.3e %10.3e %10.3e\n", static_cast<long long>(D),
                    low_rank ? "low-rank" : "wishart", trial, errors[0], errors[1], errors[2]);
      }
    }
  }
  INFO("worst relative error N=10 " << worst[0] << ", N=20 " << worst[1] << ", N=30 "
                                    << worst[2]);
  CHECK(worst[1] < worst[0]);
  CHECK(worst[2] < worst[1]);
  CHECK(worst[2] < 1e-3);
}

// ---- GKA -------------------------------------------------------------------------------------

namespace {

// GKA for T = 2 from zero state, written out: H_1 = k1 k1^T, S_1 = k1 v1^T,
// H_2 = e^{g2} H_1 + k2 k2^T, S_2 = e^{g2} S_1 + k2 v2^T, so
// o_1 = D^-1/2 (k1.q~1) v1 and o_2 = D^-1/2 (e^{g2} (k1.q~2) v1 + (k2.q~2) v2).
// With `ridge` the solve is a direct one (at::linalg_solve) rather than Chebyshev.
at::Tensor gka_two_tokens_by_hand(const ref::GkaDims& dims, const ref::Weights& w,
                                  const at::Tensor& x, bool ridge) {
  const int64_t D = dims.head_dim, Hq = dims.num_q_heads, Hkv = dims.num_kv_heads;
  const int64_t H = Hq, groups = Hq / Hkv;  // the test dims have Hq >= Hkv
  const at::Tensor u = x[0];                 // [2, d]
  auto project = [&](const char* name) { return u.matmul(w.at(name).t()); };
  at::Tensor q = conv_silu(project("q_proj.weight"), w.at("q_conv1d.weight")).view({2, H, D});
  at::Tensor k = conv_silu(project("k_proj.weight"), w.at("k_conv1d.weight")).view({2, Hkv, D});
  at::Tensor v = dims.use_v_conv ? conv_silu(project("v_proj.weight"), w.at("v_conv1d.weight"))
                                 : project("v_proj.weight");
  k = k.repeat_interleave(groups, 1);
  v = v.view({2, Hkv, D}).repeat_interleave(groups, 1);
  q = q / (q.norm(2, -1, true) + 1e-6);
  k = k / (k.norm(2, -1, true) + 1e-6);
  const at::Tensor beta = at::sigmoid(project("b_proj.weight") + w.at("b_proj.bias"));
  k = k * (beta + 1e-6).unsqueeze(-1);
  v = v * (beta + 1e-6).unsqueeze(-1);
  const at::Tensor alpha =
      dims.use_alpha_connection
          ? at::sigmoid(project("alpha_proj.weight") + w.at("alpha_proj.bias"))
          : at::ones({2, H}, at::kDouble);
  const at::Tensor g =
      -w.at("A_log").exp() * at::softplus(project("a_proj.weight") + w.at("dt_bias"));

  at::Tensor o = at::zeros({2, H, D}, at::kDouble);
  for (int64_t h = 0; h < H; ++h) {
    const at::Tensor k1 = k[0][h], k2 = k[1][h], v1 = v[0][h], v2 = v[1][h];
    const at::Tensor decay2 = g[1][h].exp();
    const at::Tensor H1 = at::outer(k1, k1);
    const at::Tensor H2 = decay2 * H1 + at::outer(k2, k2);
    auto q_tilde = [&](const at::Tensor& Ht, int64_t t) {
      const at::Tensor qt = q[t][h];
      if (!ridge) return qt;
      const at::Tensor system =
          Ht + dims.ridge_strength * Ht.norm() * at::eye(D, at::kDouble);
      const at::Tensor solved = at::linalg_solve(system, qt.unsqueeze(1)).squeeze(1);
      return qt + alpha[t][h] * (solved - qt);
    };
    const at::Tensor qt1 = q_tilde(H1, 0), qt2 = q_tilde(H2, 1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    o[0][h] = scale * k1.dot(qt1) * v1;
    o[1][h] = scale * (decay2 * k1.dot(qt2) * v1 + k2.dot(qt2) * v2);
  }
  const at::Tensor gate = project("g_proj.weight").view({2, H, D});
  o = rms_norm(o, w.at("o_norm.weight"), dims.norm_eps) * at::silu(gate);
  return o.reshape({1, 2, H * D}).matmul(w.at("o_proj.weight").t());
}

ref::GkaDims tiny_gka_dims() {
  ref::GkaDims dims;
  dims.hidden = 6;
  dims.head_dim = 4;
  dims.num_q_heads = 2;
  dims.num_kv_heads = 1;
  return dims;
}

}  // namespace

TEST_CASE("GKA reference without the ridge solve is gated linear attention (T=2)",
          "[reference]") {
  std::mt19937_64 rng(7);
  ref::GkaDims dims = tiny_gka_dims();
  dims.ridge_solve = false;
  dims.use_alpha_connection = false;
  const ref::Weights w = random_gka_weights(dims, rng);
  const at::Tensor x = random_normal({1, 2, dims.hidden}, 1.0, rng);
  const at::Tensor expected = gka_two_tokens_by_hand(dims, w, x, /*ridge=*/false);
  const at::Tensor actual = ref::gka_forward(dims, w, x);
  REQUIRE(expected.abs().max().item<double>() > 1e-3);
  CHECK(relative_max_error(actual, expected) < 1e-12);
}

TEST_CASE("GKA reference with the ridge solve matches a direct solve (T=2)", "[reference]") {
  std::mt19937_64 rng(8);
  ref::GkaDims dims = tiny_gka_dims();
  dims.use_v_conv = GENERATE(true, false);
  dims.num_iter = 200;  // converged far past float64 precision for kappa <= 1 + 1/0.02
  const ref::Weights w = random_gka_weights(dims, rng);
  const at::Tensor x = random_normal({1, 2, dims.hidden}, 1.0, rng);
  const at::Tensor expected = gka_two_tokens_by_hand(dims, w, x, /*ridge=*/true);
  const at::Tensor actual = ref::gka_forward(dims, w, x);
  CHECK(relative_max_error(actual, expected) < 1e-10);
  // The solve matters: without it the output is measurably different.
  const at::Tensor without_solve = gka_two_tokens_by_hand(dims, w, x, /*ridge=*/false);
  CHECK(relative_max_error(without_solve, expected) > 1e-3);
}

// ---- GDN -------------------------------------------------------------------------------------

namespace {

// GDN for T = 2 from zero state, written out: u1 = b1 v1, S_1 = k1 u1^T, o_1 = (k1.q1) u1;
// u2 = b2 (v2 - e^{g2} (k1.k2) u1), o_2 = e^{g2} (k1.q2) u1 + (k2.q2) u2.
at::Tensor gdn_two_tokens_by_hand(const ref::GdnDims& dims, const ref::Weights& w,
                                  const at::Tensor& x) {
  const int64_t D = dims.head_dim, Hq = dims.num_q_heads, Hkv = dims.num_kv_heads;
  const int64_t H = Hq, groups = Hq / Hkv;
  const at::Tensor u = x[0];
  auto project = [&](const char* name) { return u.matmul(w.at(name).t()); };
  at::Tensor q = conv_silu(project("q_proj.weight"), w.at("q_conv1d.weight")).view({2, H, D});
  at::Tensor k = conv_silu(project("k_proj.weight"), w.at("k_conv1d.weight")).view({2, Hkv, D});
  at::Tensor v = conv_silu(project("v_proj.weight"), w.at("v_conv1d.weight")).view({2, Hkv, D});
  k = k.repeat_interleave(groups, 1);
  v = v.repeat_interleave(groups, 1);
  q = q * at::rsqrt(q.pow(2).sum(-1, true) + 1e-6) / std::sqrt(static_cast<double>(D));
  k = k * at::rsqrt(k.pow(2).sum(-1, true) + 1e-6);
  at::Tensor beta = at::sigmoid(project("b_proj.weight"));
  if (dims.allow_neg_eigval) beta = beta * 2.0;
  const at::Tensor g =
      -w.at("A_log").exp() * at::softplus(project("gk_proj.weight") + w.at("dt_bias"));

  at::Tensor o = at::zeros({2, H, D}, at::kDouble);
  for (int64_t h = 0; h < H; ++h) {
    const at::Tensor k1 = k[0][h], k2 = k[1][h], q1 = q[0][h], q2 = q[1][h];
    const at::Tensor decay2 = g[1][h].exp();
    const at::Tensor u1 = beta[0][h] * v[0][h];
    const at::Tensor u2 = beta[1][h] * (v[1][h] - decay2 * k1.dot(k2) * u1);
    o[0][h] = k1.dot(q1) * u1;
    o[1][h] = decay2 * k1.dot(q2) * u1 + k2.dot(q2) * u2;
  }
  const at::Tensor gate = project("g_proj.weight").view({2, H, D});
  o = rms_norm(o, w.at("o_norm.weight"), dims.norm_eps) * at::silu(gate);
  return o.reshape({1, 2, H * D}).matmul(w.at("o_proj.weight").t());
}

ref::GdnDims tiny_gdn_dims() {
  ref::GdnDims dims;
  dims.hidden = 6;
  dims.head_dim = 4;
  dims.num_q_heads = 2;
  dims.num_kv_heads = 1;
  return dims;
}

}  // namespace

TEST_CASE("GDN reference follows the delta rule worked by hand (T=2)", "[reference]") {
  std::mt19937_64 rng(11);
  ref::GdnDims dims = tiny_gdn_dims();
  dims.allow_neg_eigval = GENERATE(false, true);
  const ref::Weights w = random_gdn_weights(dims, rng);
  const at::Tensor x = random_normal({1, 2, dims.hidden}, 1.0, rng);
  const at::Tensor expected = gdn_two_tokens_by_hand(dims, w, x);
  REQUIRE(expected.abs().max().item<double>() > 1e-3);
  CHECK(relative_max_error(ref::gdn_forward(dims, w, x), expected) < 1e-12);
}

TEST_CASE("GDN reference with beta forced tiny keeps the decayed zero state", "[reference]") {
  // With beta ~ 0 nothing is written, so the state stays at zero under any decay and every
  // output is (numerically) zero. Input channel 0 is held at 1 and b_proj reads only that
  // channel, so beta = sigmoid(b_proj[:,0]) on every token regardless of the random input.
  std::mt19937_64 rng(12);
  ref::GdnDims dims = tiny_gdn_dims();
  dims.hidden = 8;
  ref::Weights w = random_gdn_weights(dims, rng);
  at::Tensor x = random_normal({2, 6, dims.hidden}, 1.0, rng);
  x.select(2, 0).fill_(1.0);
  auto output_with_beta_logit = [&](double logit) {
    at::Tensor b_proj = at::zeros({2, dims.hidden}, at::kDouble);
    b_proj.select(1, 0).fill_(logit);
    w["b_proj.weight"] = b_proj;
    return ref::gdn_forward(dims, w, x);
  };
  const double tiny = output_with_beta_logit(-60.0).abs().max().item<double>();  // beta ~ 9e-27
  const double normal = output_with_beta_logit(0.0).abs().max().item<double>();  // beta = 1/2
  INFO("max |out| with beta ~ 9e-27: " << tiny << "; with beta = 1/2: " << normal);
  CHECK(tiny < 1e-18);
  CHECK(normal > 1e-2);
}
