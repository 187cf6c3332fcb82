// Gated KalmaNet (GKA) mixer: online ridge regression over the keys seen so far, in three forms
// that agree (chunked for training/prefill, per-token recurrence, single-step decode).
// Math: design/ssm-layers.md ("GKA"); config and tensor names: design/formats.md.
//
// Option semantics (matching HMF's GatedKalmaNet, so HMF checkpoints load unchanged):
//  - use_forgetting_gate=false: no decay at all (e^g = 1 for both H and S); a_proj, A_log and
//    dt_bias are then unused (HMF still stores them; we accept them if present).
//  - use_forgetting_gate_kk=false: H (the k k^T state) does not decay, S still does.
//  - use_beta_gate=false: k and v are not scaled at all (beta = 1 and no +1e-6); no b_proj.
//  - use_alpha_connection=false: alpha = 1, i.e. q~ = x; no alpha_proj.
//  - use_v_conv=false: v = v_proj(x) with neither conv nor SiLU; no v_conv1d.
//  - gla_rescale: the D^-1/2 factor on o = S^T q~ (false: factor 1).
//  - use_gate=false: plain RMSNorm (weight o_norm, eps norm_eps) with no SiLU gate; no g_proj.
//  - num_iter=0: no ridge solve (q~ = q); H is then not tracked.
//  - bp_lambda=true: gradients flow through ||H_t||_F (into lambda and the Chebyshev step
//    size, i.e. the exact derivative of the computed function); false: ||H_t||_F is treated
//    as a constant by autograd (HMF then drops the lambda term of its backward).
//  - Expanded heads H = max(num_q_heads, num_k_heads, num_v_heads); each of q, k, v is
//    repeat-interleaved to H heads, so every count must divide H.
//  - Refused with a UserError naming the layer: solver_type other than "chebyshev",
//    kv_proj_rank non-null, kv_learnable_residual true, unknown keys, bad values.
//
// Numerics: the weight projections (q, k, v, g, o) run in the input's dtype, as the other mixers'
// do (ssm_common.h's project: bf16 under a bf16 autocast region in training, whatever the master
// weights' dtype); the short convs, L2 norms, gates and the output norm in fp32 (float64 for
// float64 weights, for gradient checks).
// States are stored in fp32. The state recurrence and the Chebyshev solve run in the solve
// dtype (solve_dtype): x = (H + lambda I)^-1 q is up to 1/r = 50x larger along H's small
// eigenvectors than along the directions S^T keeps, so fp32 rounding in the iterations reaches
// the output amplified ~50x. float64 is the default (every form within ~1e-6 of the float64
// reference) except for a layer being trained on CUDA (a weight requires grad, weights not
// float64), which solves in fp32 for speed and memory (as does any layer on CUDA under
// PRIME_SSM_CORE=bf16, whose bf16 forms take fp32 operands): measured on CPU, its output is within
// 9e-5 of the float64 reference (worst at the first tokens) and its gradients within 7e-5
// (bp_lambda true) / 1e-3 (false) of float64 autograd. The fp32 solve assumes TF32 matmuls
// are off (LibTorch's default). set_solve_dtype overrides the choice.
// Training memory: the chunked form's solve is one autograd node (gka_solve.cpp) that saves
// only its inputs and recomputes the iterates in backward, giving the unrolled gradient to
// rounding; so the graph does not grow with num_iter. The recurrent and step forms are left
// to autograd (the unrolled reference).
// If ||H_t||_F is exactly 0 (all keys so far are zero) it is floored at 1e-15 so the solve
// stays finite.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "model/mixer.h"
#include "model/weights.h"

namespace prime::kernels {
struct GkaDecodeWeights;
}

namespace prime::io {
struct ModelConfig;
}

namespace prime::model {

struct GkaConfig {
  int64_t hidden_size = 0;
  int64_t head_dim = 0;
  int64_t num_q_heads = 0;
  int64_t num_k_heads = 0;
  int64_t num_v_heads = 0;
  bool use_alpha_connection = true;
  bool use_v_conv = true;
  bool use_forgetting_gate = true;
  bool gla_rescale = true;
  std::string solver_type = "chebyshev";
  bool bp_lambda = true;
  int num_iter = 30;
  double ridge_strength = 0.02;
  bool use_gate = true;
  int64_t conv_size = 4;
  double norm_eps = 1e-6;
  bool use_forgetting_gate_kk = true;
  bool use_beta_gate = true;
  int64_t chunk_size = 64;
  // Where the config came from ("layer 3"), used in every error message.
  std::string layer_desc;

  // Parses formats.md's gka_config. With `base` (the model's config) the structural fields
  // (hidden_size, head_dim, num_q/k/v_heads) come from it, as HMF derives them: absent ones are
  // filled in, present ones must agree (a UserError names both values). Without `base`,
  // hidden_size, head_dim, num_q_heads are required and num_k/v_heads default to num_q_heads.
  // Every other key defaults as in HMF. Refuses unknown keys, wrong types and unsupported
  // options (UserError naming layer_desc and the key).
  static GkaConfig from_json(const nlohmann::json& gka_config, const std::string& layer_desc,
                             const io::ModelConfig* base = nullptr);
  // Throws a UserError naming layer_desc and the option for any value we cannot honour.
  void validate() const;
  int64_t num_heads() const;  // expanded heads H
};

// Decode state of one GKA layer for a batch. States are fp32 (float64 for float64 weights).
class GkaCache : public LayerCache {
 public:
  at::Tensor conv_q, conv_k, conv_v;  // last conv_size-1 projections [B, C, K-1]; v may be undefined
  at::Tensor kk_state;                // H = sum of decayed k k^T [B, H, D, D]; undefined if num_iter=0
  at::Tensor kv_state;                // S = sum of decayed k v^T [B, H, D, D]

  int64_t bytes_per_sequence() const override;
  int64_t batch() const { return kv_state.size(0); }
};

class GkaMixer : public SsmMixer {
 public:
  // prefix: e.g. "model.layers.3.gka."; weights are taken (shape-checked) from `weights`.
  GkaMixer(GkaConfig config, const TensorMap& weights, const std::string& prefix);

  std::string symbol() const override { return "GKA"; }
  std::unique_ptr<LayerCache> make_cache(int64_t batch, const at::Device& device) const override;
  at::Tensor forward(const at::Tensor& x, LayerCache* cache) override;
  at::Tensor forward_recurrent(const at::Tensor& x, LayerCache* cache) override;
  // Packed documents at once: the chunked form over each document's own chunks (documents.h's
  // DocumentChunks), both states and the short convs restarting at every document.
  at::Tensor forward_documents(const at::Tensor& x, const Documents& documents) override;
  at::Tensor step(const at::Tensor& x, LayerCache& cache) override;
  // Whether step(x, cache) prepares its inputs on the fused decode kernels (see fused_prepare)
  // rather than in the torch form.
  bool fused_step_applies(const at::Tensor& x, const LayerCache& cache) const;

  const GkaConfig& config() const { return config_; }
  // Dtype of the state recurrence and solve for inputs on `device` (see Numerics above):
  // fp32 for a layer being trained on CUDA (a weight requires grad), or any on CUDA under
  // PRIME_SSM_CORE=bf16 (its bf16 forms take fp32 operands), unless its weights are float64;
  // float64 otherwise; set_solve_dtype overrides.
  at::ScalarType solve_dtype(const at::Device& device) const;
  // fp32 or float64 for every device (checks, measurements); nullopt: back to the default.
  void set_solve_dtype(std::optional<at::ScalarType> type);

  // The per-token inputs of the state recurrence, in the compute dtype (see gka_core.h).
  struct Prepared;

 private:
  // starts [B, T] bool (optional): the short convs restart there (packed documents).
  Prepared prepare(const at::Tensor& x, GkaCache* cache, const at::Tensor& starts = at::Tensor()) const;
  bool trained() const;  // some weight requires grad
  at::Tensor finish(const at::Tensor& o, const Prepared& prepared, const at::Tensor& x) const;
  // A decode token's inputs on fused kernels (the projections in one launch, the convs, norms and
  // gates in two: kernels/ssm_decode/decode_inputs.h), as prepare(x, &cache) gives them; undefined
  // tensors where those kernels do not serve, and then step() runs prepare.
  Prepared fused_prepare(const at::Tensor& x, GkaCache& cache) const;
  kernels::GkaDecodeWeights decode_weights() const;

  GkaConfig config_;
  std::string prefix_;
  at::ScalarType compute_type_;               // fp32, or float64 for float64 weights
  std::optional<at::ScalarType> solve_override_;  // set_solve_dtype
  at::Tensor q_proj_, k_proj_, v_proj_, a_proj_, b_proj_, b_bias_, alpha_proj_, alpha_bias_;
  at::Tensor A_log_, dt_bias_, q_conv_, k_conv_, v_conv_, g_proj_, o_norm_, o_proj_;
};

// Chebyshev iteration of design/ssm-layers.md step 6 for (H + lambda I) x = q with
// lambda = ridge_strength * ||H||_F, batched over leading dims: H [..., D, D] symmetric PSD,
// q [..., D]. Differentiable (through ||H||_F only if bp_lambda). Computes in q's dtype.
at::Tensor gka_chebyshev_solve(const at::Tensor& H, const at::Tensor& q, double ridge_strength,
                               int num_iter, bool bp_lambda = true);

}  // namespace prime::model
