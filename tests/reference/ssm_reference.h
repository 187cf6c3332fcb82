// Independent float64 references for the SSM mixers, written with plain loops over raw arrays
// (no LibTorch ops): the ground truth the torch forms are tested against. Test-only code.
// Equations: design/ssm-layers.md. Inputs and weights must be float64, contiguous, on CPU;
// weight names are relative to the mixer prefix ("q_proj.weight", "A_log", "q_conv1d.weight").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace prime::reference {

using Weights = std::map<std::string, at::Tensor>;

struct GkaDims {
  int64_t hidden = 0, head_dim = 0, num_q_heads = 0, num_kv_heads = 0;
  bool use_alpha_connection = true;
  bool use_v_conv = true;
  bool ridge_solve = true;  // false: x = q (no solve), for isolating the linear-attention part
  int num_iter = 30;
  double ridge_strength = 0.02;
  double norm_eps = 1e-6;
};
struct GdnDims {
  int64_t hidden = 0, head_dim = 0, num_q_heads = 0, num_kv_heads = 0;
  bool allow_neg_eigval = false;
  double norm_eps = 1e-5;
};
struct Mamba2Dims {
  int64_t hidden = 0, head_dim = 0, num_q_heads = 0, num_kv_heads = 0;
  double bc_norm_eps = 1e-6;
  double norm_eps = 1e-5;
};

// Each returns the mixer output [B,T,hidden] (float64) for input x [B,T,hidden] (float64),
// computed token by token from zero state.
at::Tensor gka_forward(const GkaDims& dims, const Weights& weights, const at::Tensor& x);
at::Tensor gdn_forward(const GdnDims& dims, const Weights& weights, const at::Tensor& x);
at::Tensor mamba2_forward(const Mamba2Dims& dims, const Weights& weights, const at::Tensor& x);

// Chebyshev iteration of design/ssm-layers.md step 6 for (H + lambda I) x = q, in float64.
// H is D x D row-major (symmetric PSD), frob_norm = ||H||_F.
std::vector<double> chebyshev_solve(const std::vector<double>& H, int64_t D, double lambda,
                                    double frob_norm, const std::vector<double>& q, int iterations);

}  // namespace prime::reference
