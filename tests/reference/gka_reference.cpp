// Gated KalmaNet, float64, token by token from zero state, one expanded head at a time.
// Steps numbered as in design/ssm-layers.md ("GKA").
#include "reference/common_reference.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace prime::reference {

using detail::Matrix;

namespace {

// x / (||x||_2 + 1e-6): GKA adds the eps to the norm, not to the sum of squares.
void l2_normalize(std::vector<double>& v) {
  const double norm = std::sqrt(detail::dot(v.data(), v.data(), static_cast<int64_t>(v.size())));
  for (double& e : v) e /= norm + 1e-6;
}

std::vector<double> head_slice(const Matrix& m, int64_t token, int64_t head, int64_t D) {
  const double* start = m.row(token) + head * D;
  return std::vector<double>(start, start + D);
}

}  // namespace

at::Tensor gka_forward(const GkaDims& dims, const Weights& weights, const at::Tensor& x) {
  const int64_t d = dims.hidden, D = dims.head_dim, Hq = dims.num_q_heads,
                Hk = dims.k_heads(), Hv = dims.v_heads();
  const int64_t H = std::max({Hq, Hk, Hv});
  const std::vector<int64_t> batch_tokens = detail::check_input(x, d);
  const int64_t B = batch_tokens[0], T = batch_tokens[1];

  const double* q_proj = detail::require_weight(weights, "q_proj.weight", {Hq * D, d});
  const double* k_proj = detail::require_weight(weights, "k_proj.weight", {Hk * D, d});
  const double* v_proj = detail::require_weight(weights, "v_proj.weight", {Hv * D, d});
  const double* a_proj = nullptr;
  const double* A_log = nullptr;
  const double* dt_bias = nullptr;
  if (dims.use_forgetting_gate) {  // without the gate the decay parameters are never read
    a_proj = detail::require_weight(weights, "a_proj.weight", {H, d});
    A_log = detail::require_weight(weights, "A_log", {H});
    dt_bias = detail::require_weight(weights, "dt_bias", {H});
  }
  const double* b_proj = nullptr;
  const double* b_bias = nullptr;
  if (dims.use_beta_gate) {
    b_proj = detail::require_weight(weights, "b_proj.weight", {H, d});
    b_bias = detail::require_weight(weights, "b_proj.bias", {H});
  }
  const double* alpha_proj = nullptr;
  const double* alpha_bias = nullptr;
  if (dims.use_alpha_connection) {  // without the connection HMF has no alpha_proj at all
    alpha_proj = detail::require_weight(weights, "alpha_proj.weight", {H, d});
    alpha_bias = detail::require_weight(weights, "alpha_proj.bias", {H});
  }
  int64_t q_kernel = 0, k_kernel = 0, v_kernel = 0;
  const double* q_conv = detail::require_conv_weight(weights, "q_conv1d.weight", Hq * D, &q_kernel);
  const double* k_conv = detail::require_conv_weight(weights, "k_conv1d.weight", Hk * D, &k_kernel);
  const double* v_conv = dims.use_v_conv
      ? detail::require_conv_weight(weights, "v_conv1d.weight", Hv * D, &v_kernel)
      : nullptr;
  const double* g_proj =
      dims.use_gate ? detail::require_weight(weights, "g_proj.weight", {H * D, d}) : nullptr;
  const double* o_norm = detail::require_weight(weights, "o_norm.weight", {D});
  const double* o_proj = detail::require_weight(weights, "o_proj.weight", {d, H * D});

  at::Tensor out = at::zeros({B, T, d}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    const double* sequence = x.data_ptr<double>() + b * T * d;

    // 1. Projections of every token, short causal conv, SiLU (v only if use_v_conv).
    Matrix q_all = detail::linear_sequence(sequence, T, d, q_proj, nullptr, Hq * D);
    Matrix k_all = detail::linear_sequence(sequence, T, d, k_proj, nullptr, Hk * D);
    Matrix v_all = detail::linear_sequence(sequence, T, d, v_proj, nullptr, Hv * D);
    q_all = detail::causal_conv(q_all, q_conv, q_kernel, nullptr);
    k_all = detail::causal_conv(k_all, k_conv, k_kernel, nullptr);
    if (v_conv) v_all = detail::causal_conv(v_all, v_conv, v_kernel, nullptr);
    detail::apply_silu(q_all);
    detail::apply_silu(k_all);
    if (v_conv) detail::apply_silu(v_all);
    // Per-head gate pre-activations [T][H] and the output gate [T][H*D].
    const Matrix beta_logits = dims.use_beta_gate
        ? detail::linear_sequence(sequence, T, d, b_proj, b_bias, H)
        : Matrix(T, H);
    const Matrix alpha_logits = dims.use_alpha_connection
        ? detail::linear_sequence(sequence, T, d, alpha_proj, alpha_bias, H)
        : Matrix(T, H);
    const Matrix decay_logits = dims.use_forgetting_gate
        ? detail::linear_sequence(sequence, T, d, a_proj, nullptr, H)
        : Matrix(T, H);
    const Matrix output_gate = dims.use_gate
        ? detail::linear_sequence(sequence, T, d, g_proj, nullptr, H * D)
        : Matrix(T, H * D);

    Matrix o_heads(T, H * D);
    for (int64_t head = 0; head < H; ++head) {
      // GQA: expanded head `head` reads q head / kv head by repeat-interleave.
      const int64_t q_head = detail::source_head(head, H, Hq);
      const int64_t k_head = detail::source_head(head, H, Hk);
      const int64_t v_head = detail::source_head(head, H, Hv);
      std::vector<double> H_state(static_cast<size_t>(D * D), 0.0);  // sum of decayed k k^T
      std::vector<double> S_state(static_cast<size_t>(D * D), 0.0);  // sum of decayed k v^T
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> q = head_slice(q_all, t, q_head, D);
        std::vector<double> k = head_slice(k_all, t, k_head, D);
        std::vector<double> v = head_slice(v_all, t, v_head, D);
        l2_normalize(q);
        l2_normalize(k);

        // 2. beta scales both k and v (so k k^T carries beta^2); without the gate, nothing.
        if (dims.use_beta_gate) {
          const double beta = detail::sigmoid(beta_logits.row(t)[head]);
          for (int64_t i = 0; i < D; ++i) {
            k[i] *= beta + 1e-6;
            v[i] *= beta + 1e-6;
          }
        }
        // 3. Alpha connection: how far to move q toward the ridge solution.
        const double alpha =
            dims.use_alpha_connection ? detail::sigmoid(alpha_logits.row(t)[head]) : 1.0;
        // 4. One decay drives both states (none without the forgetting gate; H keeps its
        //    full memory when use_forgetting_gate_kk is off).
        const double decay = dims.use_forgetting_gate
            ? std::exp(-std::exp(A_log[head]) *
                       detail::softplus(decay_logits.row(t)[head] + dt_bias[head]))
            : 1.0;
        const double decay_kk = dims.use_forgetting_gate_kk ? decay : 1.0;

        // 5. H_t = e^g H_{t-1} + k k^T; the ridge is relative to its Frobenius norm.
        double frob_square = 0.0;
        for (int64_t i = 0; i < D; ++i) {
          for (int64_t j = 0; j < D; ++j) {
            double& h = H_state[i * D + j];
            h = decay_kk * h + k[i] * k[j];
            frob_square += h * h;
          }
        }
        double frob_norm = std::sqrt(frob_square);
        const size_t frob_index = static_cast<size_t>((b * H + head) * T + t);
        if (dims.record_frob) dims.record_frob->push_back(frob_norm);
        if (dims.frozen_frob) frob_norm = dims.frozen_frob->at(frob_index);
        const double lambda = dims.ridge_strength * frob_norm;

        // 6. x ~= (H_t + lambda I)^-1 q  (or x = q with the solve off). While every key so far
        //    is zero, H_t = 0 and f = lambda = 0: the step is undefined and the output NaN,
        //    exactly as the equations give; tests keep some key nonzero when solving.
        const std::vector<double> solved =
            dims.ridge_solve ? chebyshev_solve(H_state, D, lambda, frob_norm, q, dims.num_iter)
                             : q;
        // 7. q~ = q + alpha (x - q).
        std::vector<double> q_tilde(static_cast<size_t>(D));
        for (int64_t i = 0; i < D; ++i) q_tilde[i] = q[i] + alpha * (solved[i] - q[i]);

        // 8. S_t = e^g S_{t-1} + k v^T;  o = D^-1/2 S_t^T q~.
        for (int64_t i = 0; i < D; ++i)
          for (int64_t j = 0; j < D; ++j)
            S_state[i * D + j] = decay * S_state[i * D + j] + k[i] * v[j];
        double* o = o_heads.row(t) + head * D;
        const double scale = dims.gla_rescale ? 1.0 / std::sqrt(static_cast<double>(D)) : 1.0;
        for (int64_t j = 0; j < D; ++j) {
          double acc = 0.0;
          for (int64_t i = 0; i < D; ++i) acc += S_state[i * D + j] * q_tilde[i];
          o[j] = scale * acc;
        }

        // 9. Gated output norm: normalise with o_norm, then multiply by SiLU(g_proj x).
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
