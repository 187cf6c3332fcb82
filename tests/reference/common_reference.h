// Small float64 building blocks shared by the mixer references (internal to tests/reference).
// Everything works on raw row-major arrays; the only LibTorch use is reading checked weights.
#pragma once

#include "reference/ssm_reference.h"

#include <cstdint>
#include <string>
#include <vector>

namespace prime::reference::detail {

// Row-major [rows][cols] matrix of doubles; a whole sequence of per-token vectors is one of
// these with rows = tokens.
struct Matrix {
  int64_t rows = 0, cols = 0;
  std::vector<double> data;
  Matrix() = default;
  Matrix(int64_t r, int64_t c) : rows(r), cols(c), data(static_cast<size_t>(r * c), 0.0) {}
  double* row(int64_t r) { return data.data() + r * cols; }
  const double* row(int64_t r) const { return data.data() + r * cols; }
};

// The weight `name`, checked to be a contiguous CPU float64 tensor of exactly `shape`;
// throws std::invalid_argument naming the problem otherwise.
const double* require_weight(const Weights& weights, const std::string& name,
                             const std::vector<int64_t>& shape);
// A depthwise conv weight [channels,1,K]; K is read from the tensor and returned.
const double* require_conv_weight(const Weights& weights, const std::string& name,
                                  int64_t channels, int64_t* kernel_size);

// Checks x is [B,T,hidden] float64, contiguous, on CPU; returns {B, T}.
std::vector<int64_t> check_input(const at::Tensor& x, int64_t hidden);

// Every token of one sequence through a Linear layer: out[t] = weight[out,in] * in[t] + bias.
// `sequence` points at T rows of `in_features` doubles; bias may be null.
Matrix linear_sequence(const double* sequence, int64_t tokens, int64_t in_features,
                       const double* weight, const double* bias, int64_t out_features);

// A column block [first, first+count) of every row.
Matrix column_block(const Matrix& m, int64_t first, int64_t count);

// Depthwise causal conv over time: y_t[c] = bias[c] + sum_j w[c,j] * u_{t-K+1+j}[c] with zeros
// before t = 0, so the last tap meets the current token. bias may be null.
Matrix causal_conv(const Matrix& u, const double* weight, int64_t kernel_size,
                   const double* bias);

double silu(double v);
double sigmoid(double v);
double softplus(double v);
void apply_silu(Matrix& m);

// Which source head an expanded head reads: repeat-interleave, e -> floor(e / (H / n)).
int64_t source_head(int64_t expanded_head, int64_t num_expanded, int64_t num_source);

double dot(const double* a, const double* b, int64_t n);
// In place: v <- v / sqrt(mean(v^2) + eps) * weight (weight may be null = ones).
void rms_norm(double* v, int64_t n, const double* weight, double eps);

// Writes out_proj(o_heads[t]) for every token into out (T rows of out_features).
void project_out(const Matrix& o_heads, const double* weight, int64_t out_features,
                 double* out);

}  // namespace prime::reference::detail
