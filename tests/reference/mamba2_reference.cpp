// Mamba-2 (HMF's priming variant), float64, token by token from zero state, one expanded head
// at a time. Steps numbered as in design/ssm-layers.md ("Mamba-2").
#include "reference/common_reference.h"

#include <algorithm>
#include <cmath>

namespace prime::reference {

using detail::Matrix;

at::Tensor mamba2_forward(const Mamba2Dims& dims, const Weights& weights, const at::Tensor& x) {
  const int64_t d = dims.hidden, D = dims.head_dim, Hq = dims.num_q_heads,
                Hkv = dims.num_kv_heads;
  const int64_t H = std::max(Hq, Hkv);
  const std::vector<int64_t> batch_tokens = detail::check_input(x, d);
  const int64_t B = batch_tokens[0], T = batch_tokens[1];

  // in_proj rows: [z | x | B | C | dt] = [Hq*D | Hkv*D | Hkv*D | Hq*D | H].
  const int64_t z_width = Hq * D, x_width = Hkv * D, b_width = Hkv * D, c_width = Hq * D;
  const int64_t z_first = 0, x_first = z_width, b_first = x_first + x_width,
                c_first = b_first + b_width, dt_first = c_first + c_width;
  const int64_t in_rows = dt_first + H;
  const int64_t conv_channels = x_width + b_width + c_width;  // conv runs over [x | B | C]

  const double* in_proj = detail::require_weight(weights, "in_proj.weight", {in_rows, d});
  const double* B_norm =
      dims.use_qk_norm ? detail::require_weight(weights, "B_norm.weight", {D}) : nullptr;
  const double* C_norm =
      dims.use_qk_norm ? detail::require_weight(weights, "C_norm.weight", {D}) : nullptr;
  int64_t kernel = 0;
  const double* conv = detail::require_conv_weight(weights, "conv1d.weight", conv_channels, &kernel);
  const double* conv_bias =
      dims.conv_bias ? detail::require_weight(weights, "conv1d.bias", {conv_channels}) : nullptr;
  const double* dt_bias = detail::require_weight(weights, "dt_bias", {H});
  const double* A_log = detail::require_weight(weights, "A_log", {H});
  const double* D_skip = detail::require_weight(weights, "D", {H});
  const double* norm = detail::require_weight(weights, "norm.weight", {H * D});
  const double* out_proj = detail::require_weight(weights, "out_proj.weight", {d, H * D});

  at::Tensor out = at::zeros({B, T, d}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    const double* sequence = x.data_ptr<double>() + b * T * d;

    // 1. One projection, split into z, x, B, C, dt; RMSNorm each head of B and C before the conv.
    const Matrix projected = detail::linear_sequence(sequence, T, d, in_proj, nullptr, in_rows);
    const Matrix z_all = detail::column_block(projected, z_first, z_width);
    const Matrix dt_all = detail::column_block(projected, dt_first, H);
    Matrix xbc = detail::column_block(projected, x_first, conv_channels);
    for (int64_t t = 0; t < T && dims.use_qk_norm; ++t) {
      double* b_row = xbc.row(t) + x_width;
      double* c_row = xbc.row(t) + x_width + b_width;
      for (int64_t head = 0; head < Hkv; ++head)
        detail::rms_norm(b_row + head * D, D, B_norm, dims.bc_norm_eps);
      for (int64_t head = 0; head < Hq; ++head)
        detail::rms_norm(c_row + head * D, D, C_norm, dims.bc_norm_eps);
    }
    // 2. Causal conv with bias over [x | B | C], then SiLU.
    xbc = detail::causal_conv(xbc, conv, kernel, conv_bias);
    detail::apply_silu(xbc);

    Matrix o_heads(T, H * D);
    for (int64_t head = 0; head < H; ++head) {
      // x and B come from Hkv heads, C and z from Hq heads; expand by repeat-interleave.
      const int64_t kv_head = detail::source_head(head, H, Hkv);
      const int64_t q_head = detail::source_head(head, H, Hq);
      const double A = -std::exp(A_log[head]);  // scalar per head
      std::vector<double> h(static_cast<size_t>(D * D), 0.0);  // h[i][j]: x dim i, B dim j
      for (int64_t t = 0; t < T; ++t) {
        const double* x_t = xbc.row(t) + kv_head * D;
        const double* B_t = xbc.row(t) + x_width + kv_head * D;
        const double* C_t = xbc.row(t) + x_width + b_width + q_head * D;
        const double* z_t = z_all.row(t) + q_head * D;

        // 3. Delta = softplus(dt + dt_bias); h = e^{Delta A} h + Delta x B^T; y = h C + D x.
        const double delta = detail::softplus(dt_all.row(t)[head] + dt_bias[head]);
        const double decay = std::exp(delta * A);
        for (int64_t i = 0; i < D; ++i)
          for (int64_t j = 0; j < D; ++j)
            h[i * D + j] = decay * h[i * D + j] + delta * x_t[i] * B_t[j];
        double* y = o_heads.row(t) + head * D;
        for (int64_t i = 0; i < D; ++i)
          y[i] = detail::dot(&h[i * D], C_t, D) + D_skip[head] * x_t[i];

        // 4. Gate first, then RMSNorm over this head's group of D with its slice of norm.weight.
        for (int64_t i = 0; i < D; ++i) y[i] *= detail::silu(z_t[i]);
        detail::rms_norm(y, D, norm + head * D, dims.norm_eps);
      }
    }
    detail::project_out(o_heads, out_proj, d, out.data_ptr<double>() + b * T * d);
  }
  return out;
}

}  // namespace prime::reference
