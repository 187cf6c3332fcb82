// Mamba-2 layer (HMF priming variant): config parsing, weights, in_proj split, B/C norms, conv,
// output gate + grouped norm, and the three forms wired to the SSD core in mamba2_ssd.cpp.
#include "model/mamba2.h"

#include "io/model_config.h"
#include "kernels/ssm_decode/decode_inputs.h"
#include "kernels/ssm_decode/ssm_decode.h"
#include "model/ssm_common.h"
#include "model/ssm_config_json.h"
#include "util/error.h"

namespace prime::model {

Mamba2Config::Mamba2Config(int64_t hidden, int64_t head_dim_, int64_t q_heads, int64_t kv_heads)
    : hidden_size(hidden), head_dim(head_dim_), num_q_heads(q_heads), num_kv_heads(kv_heads) {}

void Mamba2Config::validate() const {
  namespace cj = config_json;
  const std::string what = cj::describe(layer_desc, "mamba2_config");
  cj::require_positive(what, "d_model", hidden_size);
  cj::require_positive(what, "ssm_cfg.d_state", head_dim);
  if (num_q_heads <= 0)
    throw cj::option_error(what, "d_inner", "must be a positive multiple of d_state, got ",
                           num_q_heads * head_dim);
  if (num_kv_heads <= 0)
    throw cj::option_error(what, "d_xb", "must be a positive multiple of d_state, got ",
                           num_kv_heads * head_dim);
  // z and C have num_q_heads heads, and the output y has H heads: they only line up if the
  // x/B heads expand onto the query heads.
  if (num_q_heads % num_kv_heads)
    throw cj::option_error(what, "d_xb", "/ d_state = ", num_kv_heads,
                           " must divide d_inner / d_state = ", num_q_heads);
  if (conv_size < 1) throw cj::option_error(what, "ssm_cfg.d_conv", "must be >= 1, got ", conv_size);
  if (!(norm_eps > 0) || !(bc_norm_eps > 0))
    throw user_error(what, ": the norm eps values must be > 0");
  if (chunk_size < 1)
    throw cj::option_error(what, "ssm_cfg.chunk_size", "must be >= 1, got ", chunk_size);
}

Mamba2Config Mamba2Config::from_json(const nlohmann::json& sub, const std::string& layer_desc,
                                     const io::ModelConfig* base) {
  namespace cj = config_json;
  const std::string what = cj::describe(layer_desc, "mamba2_config");
  cj::require_object(sub, what);
  cj::refuse_unknown(sub, what,
                     {"d_model", "d_inner", "d_xb", "intermediate_size", "hidden_act",
                      "rms_norm_eps", "n_layer", "ssm_cfg", "use_qk_norm", "use_pos_emb"});
  if (cj::get_bool(sub, what, "use_pos_emb", false))
    throw cj::option_error(what, "use_pos_emb", "= true (RoPE on B/C) is not supported");
  const nlohmann::json ssm = sub.contains("ssm_cfg") ? sub.at("ssm_cfg") : nlohmann::json::object();
  const std::string ssm_what = what + ".ssm_cfg";
  cj::require_object(ssm, ssm_what);
  // dt_*, A_init_range: initialisation only.
  cj::refuse_unknown(ssm, ssm_what,
                     {"expand", "ngroups", "d_state", "headdim", "d_conv", "conv_bias", "bias",
                      "chunk_size", "dt_min", "dt_max", "dt_init_floor", "dt_scale", "dt_init",
                      "A_init_range", "D_has_hdim", "rmsnorm", "norm_before_gate"});
  Mamba2Config config;
  config.layer_desc = layer_desc;
  config.use_qk_norm = cj::get_bool(sub, what, "use_qk_norm", true);
  // Structural fields: from the base config when there is one (as HMF derives them).
  int64_t d_inner = 0, d_xb = 0;
  if (base) {
    const int64_t D = base->head_dim;
    config.hidden_size = cj::get_structural(sub, what, "d_model", base->hidden_size, "hidden_size");
    config.head_dim = cj::get_structural(ssm, ssm_what, "d_state", D, "head_dim");
    d_inner = cj::get_structural(sub, what, "d_inner", base->num_attention_heads * D,
                                 "num_attention_heads * head_dim");
    d_xb = cj::get_structural(sub, what, "d_xb", base->num_key_value_heads * D,
                              "num_key_value_heads * head_dim");
    cj::get_structural(ssm, ssm_what, "ngroups", base->num_attention_heads, "num_attention_heads");
    // The surrounding decoder block's fields: the block is built from the base config, so a
    // sub-config that disagrees describes another model.
    cj::get_structural(sub, what, "n_layer", base->num_hidden_layers, "num_hidden_layers");
    cj::get_structural(sub, what, "intermediate_size", base->intermediate_size, "intermediate_size");
    cj::check_structural_string(sub, what, "hidden_act", base->hidden_act, "hidden_act");
    cj::check_structural_double(sub, what, "rms_norm_eps", base->rms_norm_eps, "rms_norm_eps");
  } else {
    config.hidden_size = cj::get_int(sub, what, "d_model", 0, true);
    config.head_dim = cj::get_int(ssm, ssm_what, "d_state", 0, true);
    d_inner = cj::get_int(sub, what, "d_inner", 0, true);
    d_xb = cj::get_int(sub, what, "d_xb", 0, true);
    cj::get_int(sub, what, "n_layer", 0);
    cj::get_int(sub, what, "intermediate_size", 0);
    cj::get_string(sub, what, "hidden_act", "");
    cj::get_double(sub, what, "rms_norm_eps", 0.0);
  }
  if (config.head_dim <= 0 || d_inner % config.head_dim || d_xb % config.head_dim)
    throw user_error(what, ": d_inner = ", d_inner, " and d_xb = ", d_xb,
                     " must be positive multiples of ssm_cfg.d_state = ", config.head_dim);
  config.num_q_heads = d_inner / config.head_dim;
  config.num_kv_heads = d_xb / config.head_dim;
  if (cj::has(ssm, "headdim") && cj::get_int(ssm, ssm_what, "headdim", 0) != config.head_dim)
    throw cj::option_error(ssm_what, "headdim", "= ", ssm.at("headdim").dump(),
                           " must equal d_state = ", config.head_dim);
  if (cj::has(ssm, "ngroups") && cj::get_int(ssm, ssm_what, "ngroups", 0) != config.num_q_heads)
    throw cj::option_error(ssm_what, "ngroups", "= ", ssm.at("ngroups").dump(),
                           " must equal d_inner / d_state = ", config.num_q_heads);
  config.conv_size = cj::get_int(ssm, ssm_what, "d_conv", 4);
  config.conv_bias = cj::get_bool(ssm, ssm_what, "conv_bias", true);
  config.chunk_size = cj::get_int(ssm, ssm_what, "chunk_size", 256);
  if (cj::get_bool(ssm, ssm_what, "bias", false))
    throw cj::option_error(ssm_what, "bias", "= true (in/out projection biases) is not supported");
  if (cj::get_bool(ssm, ssm_what, "D_has_hdim", false))
    throw cj::option_error(ssm_what, "D_has_hdim", "= true is not supported");
  if (!cj::get_bool(ssm, ssm_what, "rmsnorm", true))
    throw cj::option_error(ssm_what, "rmsnorm", "= false is not supported");
  if (cj::get_bool(ssm, ssm_what, "norm_before_gate", false))
    throw cj::option_error(ssm_what, "norm_before_gate", "= true is not supported");
  // expand: d_inner is given (or derived) explicitly, so expand is read but not used.
  cj::get_int(ssm, ssm_what, "expand", 1);
  for (const char* init_only : {"dt_min", "dt_max", "dt_init_floor", "dt_scale"})
    cj::get_double(ssm, ssm_what, init_only, 0.0);
  config.validate();
  return config;
}

int64_t Mamba2Cache::bytes_per_sequence() const {
  int64_t bytes = 0;
  for (const at::Tensor* tensor : {&conv_state, &state})
    if (tensor->defined()) bytes += tensor->nbytes();
  return state.defined() && state.size(0) ? bytes / state.size(0) : 0;
}

Mamba2Mixer::Mamba2Mixer(const Mamba2Config& config, const TensorMap& weights,
                         const std::string& prefix)
    : config_(config), prefix_(prefix) {
  if (config_.layer_desc.empty()) config_.layer_desc = prefix;
  config_.validate();
  const int64_t hidden = config_.hidden_size, D = config_.head_dim, H = config_.num_heads();
  const int64_t channels = config_.conv_channels();
  in_proj_ = take_weight(weights, prefix, "in_proj.weight", {config_.in_proj_rows(), hidden});
  conv_ = take_weight(weights, prefix, "conv1d.weight", {channels, 1, config_.conv_size});
  if (config_.conv_bias) conv_bias_ = take_weight(weights, prefix, "conv1d.bias", {channels});
  dt_bias_ = take_weight(weights, prefix, "dt_bias", {H});
  A_log_ = take_weight(weights, prefix, "A_log", {H});
  D_ = take_weight(weights, prefix, "D", {H});
  norm_ = take_weight(weights, prefix, "norm.weight", {config_.num_q_heads * D});
  out_proj_ = take_weight(weights, prefix, "out_proj.weight", {hidden, config_.num_q_heads * D});
  if (config_.use_qk_norm) {
    B_norm_ = take_weight(weights, prefix, "B_norm.weight", {D});
    C_norm_ = take_weight(weights, prefix, "C_norm.weight", {D});
  }
}

std::unique_ptr<LayerCache> Mamba2Mixer::make_cache(int64_t batch, const at::Device& device) const {
  auto cache = std::make_unique<Mamba2Cache>();
  const auto options = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t D = config_.head_dim;
  cache->conv_state = at::zeros({batch, config_.conv_channels(), config_.conv_size - 1}, options);
  cache->state = at::zeros({batch, config_.num_heads(), D, D}, options);
  return cache;
}

Mamba2Mixer::Inputs Mamba2Mixer::prepare(const at::Tensor& x, Mamba2Cache* cache, const at::Tensor& starts) const {
  const auto ct = ssm_compute_type(x);
  const int64_t batch = x.size(0), length = x.size(1), D = config_.head_dim;
  const int64_t Hq = config_.num_q_heads, Hkv = config_.num_kv_heads, H = config_.num_heads();
  const at::Tensor zxbcdt = project(x, in_proj_).to(ct);
  const auto parts = zxbcdt.split_with_sizes({Hq * D, Hkv * D, Hkv * D, Hq * D, H}, -1);
  at::Tensor xs = parts[1], Bs = parts[2], Cs = parts[3];
  if (config_.use_qk_norm) {  // per-head norms on B and C come before the conv
    Bs = head_rms_norm(Bs.reshape({batch, length, Hkv, D}), B_norm_, config_.bc_norm_eps)
             .reshape({batch, length, Hkv * D});
    Cs = head_rms_norm(Cs.reshape({batch, length, Hq, D}), C_norm_, config_.bc_norm_eps)
             .reshape({batch, length, Hq * D});
  }
  at::Tensor xbc = causal_conv_silu(at::cat({xs, Bs, Cs}, -1), conv_, conv_bias_,
                                    cache ? &cache->conv_state : nullptr, starts);
  const auto conv_parts = xbc.split_with_sizes({Hkv * D, Hkv * D, Hq * D}, -1);
  Inputs in;
  in.x = expand_heads(conv_parts[0].reshape({batch, length, Hkv, D}), H / Hkv);
  in.B = expand_heads(conv_parts[1].reshape({batch, length, Hkv, D}), H / Hkv);
  in.C = expand_heads(conv_parts[2].reshape({batch, length, Hq, D}), H / Hq);
  in.delta = at::softplus(parts[4] + dt_bias_.to(ct));
  in.A = -at::exp(A_log_.to(ct));
  in.z = parts[0];
  return in;
}

at::Tensor Mamba2Mixer::finish(const at::Tensor& x, const Inputs& in, const at::Tensor& y) const {
  return finish_skipped(x, in, y + D_.to(y.scalar_type()).unsqueeze(-1) * in.x);
}

at::Tensor Mamba2Mixer::finish_skipped(const at::Tensor& x, const Inputs& in, const at::Tensor& skipped) const {
  const int64_t batch = skipped.size(0), length = skipped.size(1), H = skipped.size(2), D = skipped.size(3);
  // Gate, then normalise each head's group of D, then the [H*D] weight, rounded to x's dtype.
  const at::Tensor out =
      rms_norm_of_gated(skipped, in.z.reshape({batch, length, H, D}), norm_, config_.norm_eps, x.scalar_type());
  return project(out.reshape({batch, length, H * D}), out_proj_);
}

at::Tensor Mamba2Mixer::forward(const at::Tensor& x, LayerCache* cache) {
  const OutsideAutocast outside_autocast;
  check_mixer_input(x, config_.hidden_size, "Mamba-2", prefix_);
  Mamba2Cache* m2_cache = typed_cache<Mamba2Cache>(cache, x, "Mamba-2", prefix_);
  if (m2_cache && x.size(1) == 1) return step(x, *m2_cache);
  const Inputs in = prepare(x, m2_cache);
  const at::Tensor y = run_on_state(m2_cache, x.size(1), in.x.scalar_type(), [&](const at::Tensor& state) {
    return ssd_chunked(in.x, in.delta, in.A, in.B, in.C, state, config_.chunk_size);
  });
  return finish(x, in, y);
}

at::Tensor Mamba2Mixer::forward_documents(const at::Tensor& x, const Documents& documents) {
  if (documents.one_per_row) return forward(x, nullptr);
  const OutsideAutocast outside_autocast;
  check_documents_input(x, documents, config_.hidden_size, "Mamba-2", prefix_);
  const Inputs in = prepare(x, nullptr, documents.starts);
  return finish(x, in, ssd_varlen(in.x, in.delta, in.A, in.B, in.C, documents, config_.chunk_size));
}

at::Tensor Mamba2Mixer::forward_recurrent(const at::Tensor& x, LayerCache* cache) {
  const OutsideAutocast outside_autocast;
  check_mixer_input(x, config_.hidden_size, "Mamba-2", prefix_);
  Mamba2Cache* m2_cache = typed_cache<Mamba2Cache>(cache, x, "Mamba-2", prefix_);
  const Inputs in = prepare(x, m2_cache);
  const at::Tensor y = run_on_state(m2_cache, x.size(1), in.x.scalar_type(), [&](const at::Tensor& state) {
    return ssd_recurrent(in.x, in.delta, in.A, in.B, in.C, state);
  });
  return finish(x, in, y);
}

at::Tensor Mamba2Mixer::step(const at::Tensor& x, LayerCache& cache) {
  const OutsideAutocast outside_autocast;
  check_mixer_input(x, config_.hidden_size, "Mamba-2", prefix_);
  PRIME_CHECK(x.size(1) == 1, "Mamba-2 layer ", prefix_, ": step() takes one token, got ", x.size(1));
  Mamba2Cache* m2_cache = typed_cache<Mamba2Cache>(&cache, x, "Mamba-2", prefix_);
  if (at::Tensor out = fused_step(x, *m2_cache); out.defined()) return out;
  const Inputs in = prepare(x, m2_cache);
  if (state_updates_in_place(m2_cache->state, in.x)) {  // decoding: the cache's own state
    const at::Tensor y = ssd_step_in_place(in.x.select(1, 0), in.delta.select(1, 0), in.A, in.B.select(1, 0),
                                           in.C.select(1, 0), m2_cache->state);
    m2_cache->tokens += 1;
    return finish(x, in, y.unsqueeze(1));
  }
  const at::Tensor y = run_on_state(m2_cache, 1, in.x.scalar_type(), [&](const at::Tensor& state) {
    auto [y_token, next] = ssd_step(in.x.select(1, 0), in.delta.select(1, 0), in.A,
                                    in.B.select(1, 0), in.C.select(1, 0), state);
    return std::make_pair(y_token.unsqueeze(1), next);
  });
  return finish(x, in, y);
}

kernels::Mamba2DecodeWeights Mamba2Mixer::decode_weights() const {
  kernels::Mamba2DecodeWeights w;
  w.q_heads = config_.num_q_heads;
  w.kv_heads = config_.num_kv_heads;
  w.head_dim = config_.head_dim;
  w.conv = conv_;
  w.conv_bias = conv_bias_;
  if (config_.use_qk_norm) w.B_norm = B_norm_, w.C_norm = C_norm_;
  w.bc_norm_eps = config_.bc_norm_eps;
  w.A_log = A_log_;
  w.dt_bias = dt_bias_;
  return w;
}

namespace {

bool fused_serves(const at::Tensor& x, const Mamba2Cache& cache, const kernels::Mamba2DecodeWeights& w) {
  return state_updates_in_place(cache.state, at::kFloat) && kernels::mamba2_decode_inputs_apply(x, w, cache.conv_state);
}

}  // namespace

bool Mamba2Mixer::fused_step_applies(const at::Tensor& x, const LayerCache& cache) const {
  const auto* m2_cache = dynamic_cast<const Mamba2Cache*>(&cache);
  return m2_cache && fused_serves(x, *m2_cache, decode_weights());
}

at::Tensor Mamba2Mixer::fused_step(const at::Tensor& x, Mamba2Cache& cache) {
  const kernels::Mamba2DecodeWeights w = decode_weights();
  if (!fused_serves(x, cache, w)) return at::Tensor();
  const int64_t batch = x.size(0), Hq = config_.num_q_heads, D = config_.head_dim;
  const at::Tensor projection = project(x, in_proj_);  // [B, 1, z | x | B | C | dt] in x's dtype
  const kernels::Mamba2DecodeInputs fused = kernels::mamba2_decode_inputs(
      projection.reshape({batch, projection.size(-1)}), w, cache.conv_state);
  Inputs in;  // what finish() reads: x and the gate z (x's dtype; the gated norm reads it as fp32)
  in.x = fused.x.unsqueeze(1);
  in.z = projection.narrow(-1, 0, Hq * D);
  // The skip term D x in the step's own launch where the kernel serves (one launch instead of three).
  const bool skip_served = D_.is_contiguous() && D_.device() == cache.state.device() &&
                           (D_.scalar_type() == at::kFloat || D_.scalar_type() == at::kBFloat16) &&
                           kernels::mamba2_decode_apply(fused.x, fused.delta, fused.A, fused.B, fused.C, cache.state);
  if (skip_served) {
    const at::Tensor skipped = kernels::mamba2_decode_step(fused.x, fused.delta, fused.A, fused.B, fused.C,
                                                           cache.state, D_);
    cache.tokens += 1;
    return finish_skipped(x, in, skipped.unsqueeze(1));
  }
  const at::Tensor y = ssd_step_in_place(fused.x, fused.delta, fused.A, fused.B, fused.C, cache.state);
  cache.tokens += 1;
  return finish(x, in, y.unsqueeze(1));
}

}  // namespace prime::model
