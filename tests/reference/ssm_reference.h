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

// num_k_heads / num_v_heads of 0 mean num_kv_heads (the usual GQA layout, k and v alike).
// The conv kernel size is read from the conv weights.
struct GkaDims {
  int64_t hidden = 0, head_dim = 0, num_q_heads = 0, num_kv_heads = 0;
  int64_t num_k_heads = 0, num_v_heads = 0;
  bool use_alpha_connection = true;
  bool use_v_conv = true;
  bool ridge_solve = true;  // false: x = q (no solve), for isolating the linear-attention part
  int num_iter = 30;
  double ridge_strength = 0.02;
  double norm_eps = 1e-6;
  bool use_forgetting_gate = true;     // false: neither state decays
  bool use_forgetting_gate_kk = true;  // false: H does not decay (S still does)
  bool use_beta_gate = true;           // false: k and v are not scaled
  bool use_gate = true;                // false: RMSNorm only, no SiLU(g_proj x) factor
  bool gla_rescale = true;             // false: o = S^T q~ without the D^-1/2
  // For gradient checks of bp_lambda = false (||H_t||_F treated as a constant): a run with
  // record_frob set appends every ||H_t||_F (order: batch, head, token); a run with frozen_frob
  // set uses those values instead of computing them, so finite differences of it give the
  // derivative with ||H_t||_F held fixed.
  std::vector<double>* record_frob = nullptr;
  const std::vector<double>* frozen_frob = nullptr;
  int64_t k_heads() const { return num_k_heads > 0 ? num_k_heads : num_kv_heads; }
  int64_t v_heads() const { return num_v_heads > 0 ? num_v_heads : num_kv_heads; }
};
struct GdnDims {
  int64_t hidden = 0, head_dim = 0, num_q_heads = 0, num_kv_heads = 0;
  int64_t num_k_heads = 0, num_v_heads = 0;
  bool allow_neg_eigval = false;
  double norm_eps = 1e-5;
  bool use_gate = true;        // false: RMSNorm only, no SiLU(g_proj x) factor
  bool use_short_conv = true;  // false: q, k, v = SiLU(W x) with no conv
  bool conv_bias = false;      // q/k/v_conv1d.bias added inside the conv
  int64_t k_heads() const { return num_k_heads > 0 ? num_k_heads : num_kv_heads; }
  int64_t v_heads() const { return num_v_heads > 0 ? num_v_heads : num_kv_heads; }
};
struct Mamba2Dims {
  int64_t hidden = 0, head_dim = 0, num_q_heads = 0, num_kv_heads = 0;
  double bc_norm_eps = 1e-6;
  double norm_eps = 1e-5;
  bool use_qk_norm = true;  // false: no RMSNorm of B and C before the conv
  bool conv_bias = true;    // false: the conv has no bias
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
