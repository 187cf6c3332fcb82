// Gated DeltaNet mixer (design/ssm-layers.md, "GDN"): config, decode cache, the layer, and the
// gated delta rule core in its chunked (WY/UT) and recurrent forms.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "model/mixer.h"
#include "model/weights.h"

namespace prime::io {
struct ModelConfig;
}
namespace prime::kernels {
struct GdnDecodeWeights;
}

namespace prime::model {

// `gdn_config` of a hybrid checkpoint (design/formats.md). Head counts may differ per q/k/v;
// each must divide the expanded head count H = max(num_q_heads, num_k_heads, num_v_heads).
struct GdnConfig {
  int64_t hidden_size = 0;
  int64_t head_dim = 0;
  int64_t num_q_heads = 0;
  int64_t num_k_heads = 0;
  int64_t num_v_heads = 0;
  bool use_gate = true;         // false: plain RMSNorm on o, no g_proj
  bool use_short_conv = true;   // false: q, k, v = SiLU(proj) with no conv
  bool allow_neg_eigval = false;  // beta in (0, 2) instead of (0, 1)
  int64_t conv_size = 4;
  bool conv_bias = false;
  double norm_eps = 1e-5;
  int64_t chunk_size = 64;  // chunked form only; not a checkpoint field
  // Where the config came from ("layer 3 (GDN)"), used in every error message.
  std::string layer_desc;

  GdnConfig() = default;
  // Attention-shaped layer: k and v share num_kv_heads. The rest keeps its defaults.
  GdnConfig(int64_t hidden, int64_t head_dim, int64_t num_q_heads, int64_t num_kv_heads);

  // Parses a `gdn_config` object; any field that prime cannot honour (or does not know) is a
  // UserError naming `layer_desc` and the field. With `base` (the model's config) the structural
  // fields come from it as in HMF: absent ones are filled in, present ones must agree. Without
  // it hidden_size, head_dim, num_q_heads are required, num_k/v_heads default to num_q_heads.
  static GdnConfig from_json(const nlohmann::json& sub_config, const std::string& layer_desc,
                             const io::ModelConfig* base = nullptr);

  int64_t num_heads() const;  // expanded head count H
  // Throws a UserError naming layer_desc and the option for any value we cannot honour.
  void validate() const;
};

// Decode state of a GDN layer for a batch: the last conv_size-1 projections per conv (absent
// without short convs) and the delta-rule state S [B,H,D,D] (key dim, value dim), all fp32.
class GdnCache : public LayerCache {
 public:
  at::Tensor q_conv_state, k_conv_state, v_conv_state;  // [B, C, K-1]
  at::Tensor state;                                     // [B, H, D, D]

  int64_t bytes_per_sequence() const override;
  int64_t batch() const { return state.size(0); }
};

class GdnMixer : public SsmMixer {
 public:
  // prefix: the layer's tensor prefix, e.g. "model.layers.3.gdn."; it also names the layer in
  // errors. Weights stay shared with `weights` (no copy), so their requires_grad carries over.
  GdnMixer(const GdnConfig& config, const TensorMap& weights, const std::string& prefix);

  std::string symbol() const override { return "GDN"; }
  std::unique_ptr<LayerCache> make_cache(int64_t batch, const at::Device& device) const override;
  at::Tensor forward(const at::Tensor& x, LayerCache* cache) override;
  // The packed rows at once: projections over all B*T tokens, the short convs with document
  // resets, the chunked core over the documents' chunks (gated_delta_rule_varlen). Equal to
  // the per-document default to rounding, with no document padded beyond its last chunk.
  at::Tensor forward_documents(const at::Tensor& x, const Documents& documents) override;
  at::Tensor forward_recurrent(const at::Tensor& x, LayerCache* cache) override;
  at::Tensor step(const at::Tensor& x, LayerCache& cache) override;
  // Whether step(x, cache) runs on the fused decode kernels (see fused_step) rather than the
  // torch form.
  bool fused_step_applies(const at::Tensor& x, const LayerCache& cache) const;

  const GdnConfig& config() const { return config_; }

 private:
  struct Inputs {  // per-token operands of the delta rule, compute dtype, heads expanded
    at::Tensor q, k, v;  // [B,T,H,D], q and k normalised (q also scaled by D^-1/2)
    at::Tensor g, beta;  // [B,T,H]
  };
  // starts [B,T] bool (packed documents) or undefined: the short convs restart at each flag.
  Inputs prepare(const at::Tensor& x, GdnCache* cache, const at::Tensor& starts = at::Tensor()) const;
  // Norm, gate, o_proj; the gate's projection is computed here unless given.
  at::Tensor finish(const at::Tensor& x, const at::Tensor& o, const at::Tensor& gate_projection = {}) const;
  // The decode step on fused kernels (the projections in two launches, the convs, norms and gates
  // in one: kernels/ssm_decode/decode_inputs.h, then the state update); undefined where they do
  // not serve, and then step() runs the torch form.
  at::Tensor fused_step(const at::Tensor& x, GdnCache& cache);
  kernels::GdnDecodeWeights decode_weights() const;

  GdnConfig config_;
  std::string prefix_;
  at::Tensor q_proj_, k_proj_, v_proj_, b_proj_, gk_proj_, g_proj_, o_proj_;
  at::Tensor q_conv_, k_conv_, v_conv_, q_conv_bias_, k_conv_bias_, v_conv_bias_;
  at::Tensor A_log_, dt_bias_, o_norm_;
};

// The gated delta rule core, per expanded head: S <- e^g S; u = beta (v - S^T k);
// S += k u^T; o = S^T q. q, k, v [B,T,H,D]; g, beta [B,T,H]; state [B,H,D,D] or undefined
// (zeros). All in one floating dtype (fp32, or f64 for gradient checks). Returns o [B,T,H,D] and
// the final state. The chunked form is differentiable by autograd. chunk_starts [N] bool (N =
// ceil(T / chunk_size)) or undefined: the state entering a flagged chunk is zero (a document
// starts there; see gated_delta_rule_varlen).
std::pair<at::Tensor, at::Tensor> gated_delta_rule_chunked(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& g,
                                                           const at::Tensor& beta,
                                                           const at::Tensor& state,
                                                           int64_t chunk_size,
                                                           const at::Tensor& chunk_starts = at::Tensor());
// The chunked core over packed documents: q, k, v [B,T,H,D]; g, beta [B,T,H] of the rows that
// `layout` (Documents::chunks(chunk_size)) describes. Each document starts from a zero state
// and its chunks start at its first token, so the output [B,T,H,D] equals the documents run one
// by one through gated_delta_rule_chunked, without padding any document beyond its last chunk.
at::Tensor gated_delta_rule_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& g, const at::Tensor& beta,
                                   const DocumentChunks& layout, int64_t chunk_size);
std::pair<at::Tensor, at::Tensor> gated_delta_rule_recurrent(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, const at::Tensor& state);
// One token: q, k, v [B,H,D]; g, beta [B,H]; state [B,H,D,D]. Returns (o [B,H,D], new state).
std::pair<at::Tensor, at::Tensor> gated_delta_rule_step(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v, const at::Tensor& g,
                                                        const at::Tensor& beta,
                                                        const at::Tensor& state);
// The same step written into `state` itself (contiguous, q's dtype; no autograd: the decode
// path): the state is read three times and written twice, where the step above plus the cache's
// copy read it six times and write it four. Returns o [B,H,D].
at::Tensor gated_delta_rule_step_in_place(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& g,
                                          const at::Tensor& beta, at::Tensor& state);

}  // namespace prime::model
