// Shared float64 pieces of the mixer references and the Chebyshev solver
// (design/ssm-layers.md, "Shared pieces" and GKA step 6).
#include "reference/common_reference.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace prime::reference {
namespace detail {
namespace {

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream text;
  text << "[";
  for (size_t i = 0; i < shape.size(); ++i) text << (i ? "," : "") << shape[i];
  text << "]";
  return text.str();
}

void check_float64_cpu(const at::Tensor& t, const std::string& what) {
  if (!t.defined()) throw std::invalid_argument("reference: " + what + " is undefined");
  if (t.scalar_type() != at::kDouble)
    throw std::invalid_argument("reference: " + what + " must be float64");
  if (!t.device().is_cpu()) throw std::invalid_argument("reference: " + what + " must be on CPU");
  if (!t.is_contiguous()) throw std::invalid_argument("reference: " + what + " must be contiguous");
}

}  // namespace

const double* require_weight(const Weights& weights, const std::string& name,
                             const std::vector<int64_t>& shape) {
  auto found = weights.find(name);
  if (found == weights.end()) throw std::invalid_argument("reference: missing weight " + name);
  const at::Tensor& t = found->second;
  check_float64_cpu(t, "weight " + name);
  if (t.sizes() != at::IntArrayRef(shape))
    throw std::invalid_argument("reference: weight " + name + " has shape " +
                                shape_string(t.sizes()) + ", expected " + shape_string(shape));
  return t.data_ptr<double>();
}

const double* require_conv_weight(const Weights& weights, const std::string& name,
                                  int64_t channels, int64_t* kernel_size) {
  auto found = weights.find(name);
  if (found == weights.end()) throw std::invalid_argument("reference: missing weight " + name);
  const at::Tensor& t = found->second;
  if (t.dim() != 3 || t.size(2) < 1)
    throw std::invalid_argument("reference: conv weight " + name + " must be [C,1,K]");
  *kernel_size = t.size(2);
  return require_weight(weights, name, {channels, 1, *kernel_size});
}

std::vector<int64_t> check_input(const at::Tensor& x, int64_t hidden) {
  check_float64_cpu(x, "input x");
  if (x.dim() != 3 || x.size(2) != hidden)
    throw std::invalid_argument("reference: input x has shape " + shape_string(x.sizes()) +
                                ", expected [B,T," + std::to_string(hidden) + "]");
  return {x.size(0), x.size(1)};
}

Matrix linear_sequence(const double* sequence, int64_t tokens, int64_t in_features,
                       const double* weight, const double* bias, int64_t out_features) {
  Matrix out(tokens, out_features);
  for (int64_t t = 0; t < tokens; ++t) {
    const double* input = sequence + t * in_features;
    for (int64_t o = 0; o < out_features; ++o) {
      double acc = bias ? bias[o] : 0.0;
      const double* weight_row = weight + o * in_features;  // Linear stores [out, in]
      for (int64_t i = 0; i < in_features; ++i) acc += weight_row[i] * input[i];
      out.row(t)[o] = acc;
    }
  }
  return out;
}

Matrix column_block(const Matrix& m, int64_t first, int64_t count) {
  Matrix block(m.rows, count);
  for (int64_t t = 0; t < m.rows; ++t)
    for (int64_t c = 0; c < count; ++c) block.row(t)[c] = m.row(t)[first + c];
  return block;
}

Matrix causal_conv(const Matrix& u, const double* weight, int64_t kernel_size,
                   const double* bias) {
  Matrix y(u.rows, u.cols);
  for (int64_t t = 0; t < u.rows; ++t) {
    for (int64_t c = 0; c < u.cols; ++c) {
      double acc = bias ? bias[c] : 0.0;
      for (int64_t tap = 0; tap < kernel_size; ++tap) {
        // Tap K-1 multiplies the current token, tap 0 the token K-1 steps back.
        const int64_t source_token = t - (kernel_size - 1) + tap;
        if (source_token < 0) continue;  // zero history before the sequence starts
        acc += weight[c * kernel_size + tap] * u.row(source_token)[c];
      }
      y.row(t)[c] = acc;
    }
  }
  return y;
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
double silu(double v) { return v * sigmoid(v); }
// log(1 + e^v) written so that neither branch overflows; no threshold cut-off, so this is the
// exact function (PyTorch's returns v itself above 20, a 2e-9 difference).
double softplus(double v) { return std::max(v, 0.0) + std::log1p(std::exp(-std::abs(v))); }

void apply_silu(Matrix& m) {
  for (double& v : m.data) v = silu(v);
}

int64_t source_head(int64_t expanded_head, int64_t num_expanded, int64_t num_source) {
  if (num_source <= 0 || num_expanded % num_source != 0)
    throw std::invalid_argument("reference: " + std::to_string(num_expanded) +
                                " expanded heads are not a multiple of " +
                                std::to_string(num_source));
  const int64_t group = num_expanded / num_source;
  return expanded_head / group;
}

double dot(const double* a, const double* b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void rms_norm(double* v, int64_t n, const double* weight, double eps) {
  const double mean_square = dot(v, v, n) / static_cast<double>(n);
  const double inv_rms = 1.0 / std::sqrt(mean_square + eps);
  for (int64_t i = 0; i < n; ++i) v[i] = v[i] * inv_rms * (weight ? weight[i] : 1.0);
}

void project_out(const Matrix& o_heads, const double* weight, int64_t out_features,
                 double* out) {
  Matrix projected = linear_sequence(o_heads.data.data(), o_heads.rows, o_heads.cols, weight,
                                     nullptr, out_features);
  for (size_t i = 0; i < projected.data.size(); ++i) out[i] = projected.data[i];
}

}  // namespace detail

std::vector<double> chebyshev_solve(const std::vector<double>& H, int64_t D, double lambda,
                                    double frob_norm, const std::vector<double>& q,
                                    int iterations) {
  if (static_cast<int64_t>(H.size()) != D * D || static_cast<int64_t>(q.size()) != D)
    throw std::invalid_argument("chebyshev_solve: H must be D*D and q must be D long");
  // The spectrum of H + lambda I lies in [lambda, lambda + f] because ||H||_2 <= ||H||_F = f.
  // eta = 1 / centre of that interval; c = (half-width / centre)^2 / 4.
  const double f = frob_norm;
  const double eta = 2.0 / (2.0 * lambda + f);
  const double c = std::pow(f / (2.0 * (2.0 * lambda + f)), 2);

  // (H + lambda I) x - q
  auto residual = [&](const std::vector<double>& x) {
    std::vector<double> r(static_cast<size_t>(D));
    for (int64_t i = 0; i < D; ++i) {
      double acc = lambda * x[i] - q[i];
      for (int64_t j = 0; j < D; ++j) acc += H[i * D + j] * x[j];
      r[i] = acc;
    }
    return r;
  };

  std::vector<double> x_prev(static_cast<size_t>(D), 0.0);
  std::vector<double> x(static_cast<size_t>(D));
  for (int64_t i = 0; i < D; ++i) x[i] = eta * q[i];  // first step: one Richardson step from 0
  double omega = 2.0;
  for (int step = 0; step < iterations; ++step) {
    omega = 1.0 / (1.0 - c * omega);
    const std::vector<double> r = residual(x);
    std::vector<double> x_next(static_cast<size_t>(D));
    for (int64_t i = 0; i < D; ++i)
      x_next[i] = omega * (x[i] - eta * r[i]) + (1.0 - omega) * x_prev[i];
    x_prev = std::move(x);
    x = std::move(x_next);
  }
  return x;
}

}  // namespace prime::reference
