// Gated DeltaNet, float64, token by token from zero state, one expanded head at a time.
// Steps numbered as in design/ssm-layers.md ("GDN").
#include "reference/common_reference.h"

#include <algorithm>
#include <cmath>

namespace prime::reference {

using detail::Matrix;

namespace {

// v * rsqrt(sum v^2 + 1e-6) * extra_scale: GDN's in-op normalisation (eps inside the sqrt).
std::vector<double> rsqrt_normalized(const double* v, int64_t D, double extra_scale) {
  const double inv_norm = 1.0 / std::sqrt(detail::dot(v, v, D) + 1e-6);
  std::vector<double> out(static_cast<size_t>(D));
  for (int64_t i = 0; i < D; ++i) out[i] = v[i] * inv_norm * extra_scale;
  return out;
}

}  // namespace

at::Tensor gdn_forward(const GdnDims& dims, const Weights& weights, const at::Tensor& x) {
  const int64_t d = dims.hidden, D = dims.head_dim, Hq = dims.num_q_heads,
                Hk = dims.k_heads(), Hv = dims.v_heads();
  const int64_t H = std::max({Hq, Hk, Hv});
  const std::vector<int64_t> batch_tokens = detail::check_input(x, d);
  const int64_t B = batch_tokens[0], T = batch_tokens[1];

  const double* q_proj = detail::require_weight(weights, "q_proj.weight", {Hq * D, d});
  const double* k_proj = detail::require_weight(weights, "k_proj.weight", {Hk * D, d});
  const double* v_proj = detail::require_weight(weights, "v_proj.weight", {Hv * D, d});
  const double* b_proj = detail::require_weight(weights, "b_proj.weight", {H, d});
  const double* gk_proj = detail::require_weight(weights, "gk_proj.weight", {H, d});
  const double* A_log = detail::require_weight(weights, "A_log", {H});
  const double* dt_bias = detail::require_weight(weights, "dt_bias", {H});
  int64_t q_kernel = 0, k_kernel = 0, v_kernel = 0;
  const double *q_conv = nullptr, *k_conv = nullptr, *v_conv = nullptr;
  const double *q_conv_bias = nullptr, *k_conv_bias = nullptr, *v_conv_bias = nullptr;
  if (dims.use_short_conv) {
    q_conv = detail::require_conv_weight(weights, "q_conv1d.weight", Hq * D, &q_kernel);
    k_conv = detail::require_conv_weight(weights, "k_conv1d.weight", Hk * D, &k_kernel);
    v_conv = detail::require_conv_weight(weights, "v_conv1d.weight", Hv * D, &v_kernel);
    if (dims.conv_bias) {
      q_conv_bias = detail::require_weight(weights, "q_conv1d.bias", {Hq * D});
      k_conv_bias = detail::require_weight(weights, "k_conv1d.bias", {Hk * D});
      v_conv_bias = detail::require_weight(weights, "v_conv1d.bias", {Hv * D});
    }
  }
  const double* g_proj =
      dims.use_gate ? detail::require_weight(weights, "g_proj.weight", {H * D, d}) : nullptr;
  const double* o_norm = detail::require_weight(weights, "o_norm.weight", {D});
  const double* o_proj = detail::require_weight(weights, "o_proj.weight", {d, H * D});

  at::Tensor out = at::zeros({B, T, d}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    const double* sequence = x.data_ptr<double>() + b * T * d;

    // 1. q, k, v = SiLU(conv(W x)) (no conv without short convs); per-head beta and decay
    //    pre-activations; output gate.
    Matrix q_all = detail::linear_sequence(sequence, T, d, q_proj, nullptr, Hq * D);
    Matrix k_all = detail::linear_sequence(sequence, T, d, k_proj, nullptr, Hk * D);
    Matrix v_all = detail::linear_sequence(sequence, T, d, v_proj, nullptr, Hv * D);
    if (dims.use_short_conv) {
      q_all = detail::causal_conv(q_all, q_conv, q_kernel, q_conv_bias);
      k_all = detail::causal_conv(k_all, k_conv, k_kernel, k_conv_bias);
      v_all = detail::causal_conv(v_all, v_conv, v_kernel, v_conv_bias);
    }
    detail::apply_silu(q_all);
    detail::apply_silu(k_all);
    detail::apply_silu(v_all);
    const Matrix beta_logits = detail::linear_sequence(sequence, T, d, b_proj, nullptr, H);
    const Matrix decay_logits = detail::linear_sequence(sequence, T, d, gk_proj, nullptr, H);
    const Matrix output_gate = dims.use_gate
        ? detail::linear_sequence(sequence, T, d, g_proj, nullptr, H * D)
        : Matrix(T, H * D);

    Matrix o_heads(T, H * D);
    const double q_scale = 1.0 / std::sqrt(static_cast<double>(D));
    for (int64_t head = 0; head < H; ++head) {
      const int64_t q_head = detail::source_head(head, H, Hq);
      const int64_t k_head = detail::source_head(head, H, Hk);
      const int64_t v_head = detail::source_head(head, H, Hv);
      std::vector<double> S(static_cast<size_t>(D * D), 0.0);  // S[i][j]: key dim i, value dim j
      for (int64_t t = 0; t < T; ++t) {
        // 2. Normalise q (with the D^-1/2 attention scale folded in) and k.
        const std::vector<double> q = rsqrt_normalized(q_all.row(t) + q_head * D, D, q_scale);
        const std::vector<double> k = rsqrt_normalized(k_all.row(t) + k_head * D, D, 1.0);
        const double* v = v_all.row(t) + v_head * D;

        // beta in (0,1), or (0,2) when negative eigenvalues of (I - beta k k^T) are allowed.
        double beta = detail::sigmoid(beta_logits.row(t)[head]);
        if (dims.allow_neg_eigval) beta *= 2.0;
        const double g = -std::exp(A_log[head]) *
                         detail::softplus(decay_logits.row(t)[head] + dt_bias[head]);
        const double decay = std::exp(g);

        // 3. Decay the state, then the delta rule: u = beta (v - S^T k); S += k u^T.
        for (double& s : S) s *= decay;
        std::vector<double> u(static_cast<size_t>(D));
        for (int64_t j = 0; j < D; ++j) {
          double predicted = 0.0;  // (S^T k)_j: what the state currently recalls for key k
          for (int64_t i = 0; i < D; ++i) predicted += S[i * D + j] * k[i];
          u[j] = beta * (v[j] - predicted);
        }
        for (int64_t i = 0; i < D; ++i)
          for (int64_t j = 0; j < D; ++j) S[i * D + j] += k[i] * u[j];

        // o = S^T q.
        double* o = o_heads.row(t) + head * D;
        for (int64_t j = 0; j < D; ++j) {
          double acc = 0.0;
          for (int64_t i = 0; i < D; ++i) acc += S[i * D + j] * q[i];
          o[j] = acc;
        }

        // 4. Gated output norm: normalise with o_norm, then multiply by SiLU(g_proj x).
        detail::rms_norm(o, D, o_norm, dims.norm_eps);
        if (dims.use_gate) {
          const double* gate = output_gate.row(t) + head * D;
          for (int64_t j = 0; j < D; ++j) o[j] *= detail::silu(gate[j]);
        }
      }
    }
    detail::project_out(o_heads, o_proj, d, out.data_ptr<double>() + b * T * d);
  }
  return out;
}

}  // namespace prime::reference
