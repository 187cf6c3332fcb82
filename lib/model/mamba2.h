// Mamba-2 (SSD) mixer in HMF's priming variant (design/ssm-layers.md, "Mamba-2"): config, decode
// cache, the layer, and the SSD scan core in its chunked and recurrent forms.
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
struct Mamba2DecodeWeights;
}

namespace prime::model {

// `mamba2_config` of a hybrid checkpoint (design/formats.md). Heads have dimension
// head_dim = d_state for x, B, C, z and the state alike; z and C have num_q_heads heads
// (d_inner = num_q_heads * head_dim), x and B have num_kv_heads (d_xb = num_kv_heads * head_dim)
// and are expanded to H = num_q_heads heads (num_kv_heads must divide num_q_heads).
struct Mamba2Config {
  int64_t hidden_size = 0;   // d_model
  int64_t head_dim = 0;      // d_state
  int64_t num_q_heads = 0;   // d_inner / d_state
  int64_t num_kv_heads = 0;  // d_xb / d_state
  int64_t conv_size = 4;     // ssm_cfg.d_conv
  bool conv_bias = true;     // ssm_cfg.conv_bias
  bool use_qk_norm = true;   // B_norm / C_norm before the conv
  double bc_norm_eps = 1e-6;
  double norm_eps = 1e-5;
  int64_t chunk_size = 256;  // chunked form only
  // Where the config came from ("layer 3 (M2)"), used in every error message.
  std::string layer_desc;

  Mamba2Config() = default;
  Mamba2Config(int64_t hidden, int64_t head_dim, int64_t num_q_heads, int64_t num_kv_heads);

  // Parses a `mamba2_config` object; any field that prime cannot honour (or does not know) is a
  // UserError naming `layer_desc` and the field.
  // With `base` (the model's config) the structural fields (d_model, d_inner, d_xb, d_state,
  // ngroups, n_layer, intermediate_size, hidden_act, rms_norm_eps) come from it as in HMF:
  // absent ones are filled in, present ones must agree. Without it d_model, d_inner, d_xb and
  // ssm_cfg.d_state are required.
  static Mamba2Config from_json(const nlohmann::json& sub_config, const std::string& layer_desc,
                                const io::ModelConfig* base = nullptr);

  int64_t num_heads() const { return num_q_heads; }  // H = max(Hq, Hkv) = Hq
  int64_t conv_channels() const { return (2 * num_kv_heads + num_q_heads) * head_dim; }
  int64_t in_proj_rows() const {  // [z | x | B | C | dt]
    return 2 * num_q_heads * head_dim + 2 * num_kv_heads * head_dim + num_heads();
  }
  // Throws a UserError naming layer_desc and the option for any value we cannot honour.
  void validate() const;
};

// Decode state of a Mamba-2 layer: the conv history over [x|B|C] and h [B,H,P,N] (P = head dim
// of x, N = state dim; both head_dim here), fp32.
class Mamba2Cache : public LayerCache {
 public:
  at::Tensor conv_state;  // [B, conv_channels, K-1]
  at::Tensor state;       // [B, H, P, N]

  int64_t bytes_per_sequence() const override;
  int64_t batch() const { return state.size(0); }
};

class Mamba2Mixer : public SsmMixer {
 public:
  // prefix: the layer's tensor prefix, e.g. "model.layers.3.mamba."; it also names the layer in
  // errors. Weights stay shared with `weights` (no copy), so their requires_grad carries over.
  Mamba2Mixer(const Mamba2Config& config, const TensorMap& weights, const std::string& prefix);

  std::string symbol() const override { return "M2"; }
  std::unique_ptr<LayerCache> make_cache(int64_t batch, const at::Device& device) const override;
  at::Tensor forward(const at::Tensor& x, LayerCache* cache) override;
  // The packed rows at once: projections over all B*T tokens, the short conv with document
  // resets, the chunked scan over the documents' chunks (ssd_varlen). Equal to the
  // per-document default up to rounding.
  at::Tensor forward_documents(const at::Tensor& x, const Documents& documents) override;
  at::Tensor forward_recurrent(const at::Tensor& x, LayerCache* cache) override;
  at::Tensor step(const at::Tensor& x, LayerCache& cache) override;
  // Whether step(x, cache) runs on the fused decode kernels (see fused_step) rather than the
  // torch form.
  bool fused_step_applies(const at::Tensor& x, const LayerCache& cache) const;

  const Mamba2Config& config() const { return config_; }

 private:
  struct Inputs {  // per-token operands of the scan, compute dtype, heads expanded
    at::Tensor x, B, C;  // [B,T,H,D]
    at::Tensor delta;    // [B,T,H], softplus(dt + dt_bias)
    at::Tensor A;        // [H], -exp(A_log)
    at::Tensor z;        // [B,T,Hq*D], the output gate
  };
  // starts [B,T] bool (packed documents) or undefined: the short conv restarts at each flagged
  // token (exclusive with a cache).
  Inputs prepare(const at::Tensor& x, Mamba2Cache* cache, const at::Tensor& starts = at::Tensor()) const;
  // D skip, gate, grouped RMSNorm, out_proj.
  at::Tensor finish(const at::Tensor& x, const Inputs& in, const at::Tensor& y) const;
  // finish() after the skip term: skipped = y + D x.
  at::Tensor finish_skipped(const at::Tensor& x, const Inputs& in, const at::Tensor& skipped) const;
  // The decode step on fused kernels (in_proj, then the norms, conv and gates in one launch:
  // kernels/ssm_decode/decode_inputs.h, then the state update); undefined where they do not
  // serve, and then step() runs the torch form.
  at::Tensor fused_step(const at::Tensor& x, Mamba2Cache& cache);
  kernels::Mamba2DecodeWeights decode_weights() const;

  Mamba2Config config_;
  std::string prefix_;
  at::Tensor in_proj_, conv_, conv_bias_, dt_bias_, A_log_, D_, norm_, out_proj_, B_norm_, C_norm_;
};

// The SSD scan per head: h_t = e^(delta_t A) h_{t-1} + delta_t x_t B_t^T; y_t = h_t C_t.
// x [B,T,H,P]; delta [B,T,H]; A [H]; Bm, Cm [B,T,H,N]; state [B,H,P,N] or undefined (zeros).
// One floating dtype throughout. Returns y [B,T,H,P] and the final state. The chunked form is
// differentiable by autograd.
// chunk_starts [T / chunk_size] bool (T a multiple of chunk_size) or undefined: the state
// entering a flagged chunk is zero (a document starts there; see ssd_varlen).
std::pair<at::Tensor, at::Tensor> ssd_chunked(const at::Tensor& x, const at::Tensor& delta,
                                              const at::Tensor& A, const at::Tensor& Bm,
                                              const at::Tensor& Cm, const at::Tensor& state,
                                              int64_t chunk_size, const at::Tensor& chunk_starts = at::Tensor());
// The chunked scan over packed documents: x, delta, Bm, Cm of the rows `documents` describes,
// laid out in chunks of min(chunk_size, 64) (Documents::chunks), every document from a zero
// state. Returns y [B,T,H,P]; equal to each document run alone, up to rounding.
at::Tensor ssd_varlen(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                      const at::Tensor& Cm, const Documents& documents, int64_t chunk_size);
std::pair<at::Tensor, at::Tensor> ssd_recurrent(const at::Tensor& x, const at::Tensor& delta,
                                                const at::Tensor& A, const at::Tensor& Bm,
                                                const at::Tensor& Cm, const at::Tensor& state);
// One token: x [B,H,P]; delta [B,H]; Bm, Cm [B,H,N]; state [B,H,P,N].
std::pair<at::Tensor, at::Tensor> ssd_step(const at::Tensor& x, const at::Tensor& delta,
                                           const at::Tensor& A, const at::Tensor& Bm,
                                           const at::Tensor& Cm, const at::Tensor& state);
// The same step written into `state` itself (contiguous, x's dtype; no autograd: the decode
// path): the state is read twice and written twice instead of five and four times. Returns y.
at::Tensor ssd_step_in_place(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                             const at::Tensor& Bm, const at::Tensor& Cm, at::Tensor& state);

}  // namespace prime::model
