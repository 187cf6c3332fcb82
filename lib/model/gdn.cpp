// GDN layer: config parsing, weights, projections + short convs, output norm, and the three
// forms wired to the delta-rule core in gdn_rule.cpp.
#include "model/gdn.h"

#include <algorithm>
#include <cmath>

#include "io/model_config.h"
#include "kernels/ssm_decode/decode_inputs.h"
#include "model/linear.h"
#include "model/ssm_common.h"
#include "model/ssm_config_json.h"
#include "util/error.h"

namespace prime::model {

GdnConfig::GdnConfig(int64_t hidden, int64_t head_dim_, int64_t q_heads, int64_t kv_heads)
    : hidden_size(hidden), head_dim(head_dim_), num_q_heads(q_heads), num_k_heads(kv_heads),
      num_v_heads(kv_heads) {}

int64_t GdnConfig::num_heads() const { return config_json::expanded_heads(num_q_heads, num_k_heads, num_v_heads); }

void GdnConfig::validate() const {
  namespace cj = config_json;
  const std::string what = cj::describe(layer_desc, "gdn_config");
  cj::validate_heads(what, hidden_size, head_dim, num_q_heads, num_k_heads, num_v_heads);
  if (use_short_conv) cj::require_positive(what, "conv_size", conv_size);
  if (!(norm_eps > 0) || !std::isfinite(norm_eps))
    throw cj::option_error(what, "norm_eps", "must be a positive number");
  cj::require_positive(what, "chunk_size", chunk_size);
}

GdnConfig GdnConfig::from_json(const nlohmann::json& sub, const std::string& layer_desc,
                               const io::ModelConfig* base) {
  namespace cj = config_json;
  const std::string what = cj::describe(layer_desc, "gdn_config");
  cj::require_object(sub, what);
  // use_state_passing_sp and mode only choose how HMF schedules the same math.
  cj::refuse_unknown(sub, what,
                     {"hidden_size", "head_dim", "num_q_heads", "num_k_heads", "num_v_heads",
                      "use_gate", "use_short_conv", "allow_neg_eigval", "conv_size", "conv_bias",
                      "norm_eps", "kv_proj_rank", "kv_learnable_residual", "use_state_passing_sp",
                      "mode", "chunk_size"});
  GdnConfig config;
  config.layer_desc = layer_desc;
  // Structural fields: from the base config when there is one (as HMF derives them).
  if (base) {
    config.hidden_size = cj::get_structural(sub, what, "hidden_size", base->hidden_size, "hidden_size");
    config.head_dim = cj::get_structural(sub, what, "head_dim", base->head_dim, "head_dim");
    config.num_q_heads = cj::get_structural(sub, what, "num_q_heads", base->num_attention_heads,
                                            "num_attention_heads");
    config.num_k_heads = cj::get_structural(sub, what, "num_k_heads", base->num_key_value_heads,
                                            "num_key_value_heads");
    config.num_v_heads = cj::get_structural(sub, what, "num_v_heads", base->num_key_value_heads,
                                            "num_key_value_heads");
  } else {  // absent k/v head counts default to the query heads
    config.hidden_size = cj::get_int(sub, what, "hidden_size", 0, true);
    config.head_dim = cj::get_int(sub, what, "head_dim", 0, true);
    config.num_q_heads = cj::get_int(sub, what, "num_q_heads", 0, true);
    config.num_k_heads = cj::get_int(sub, what, "num_k_heads", config.num_q_heads);
    config.num_v_heads = cj::get_int(sub, what, "num_v_heads", config.num_q_heads);
  }
  config.use_gate = cj::get_bool(sub, what, "use_gate", true);
  config.use_short_conv = cj::get_bool(sub, what, "use_short_conv", true);
  config.allow_neg_eigval = cj::get_bool(sub, what, "allow_neg_eigval", false);
  config.conv_size = cj::get_int(sub, what, "conv_size", 4);
  config.conv_bias = cj::get_bool(sub, what, "conv_bias", false);
  config.norm_eps = cj::get_double(sub, what, "norm_eps", 1e-5);
  config.chunk_size = cj::get_int(sub, what, "chunk_size", 64);
  if (cj::has(sub, "kv_proj_rank"))
    throw cj::option_error(what, "kv_proj_rank", "= ", sub.at("kv_proj_rank").dump(),
                           ": low-rank k/v head expansion is not supported; use null");
  // As in GKA: a learnable k/v head mixing is not implemented, so a checkpoint that asks for it
  // is refused rather than run with a fixed repeat.
  if (cj::get_bool(sub, what, "kv_learnable_residual", false))
    throw cj::option_error(what, "kv_learnable_residual",
                           "= true: learnable k/v head mixing is not supported; use false");
  const std::string mode = cj::get_string(sub, what, "mode", "chunk");
  if (mode != "chunk" && mode != "fused_recurrent")
    throw cj::option_error(what, "mode", "must be \"chunk\" or \"fused_recurrent\", got \"", mode,
                           "\"");
  cj::get_bool(sub, what, "use_state_passing_sp", false);
  config.validate();
  return config;
}

int64_t GdnCache::bytes_per_sequence() const {
  int64_t bytes = 0;
  for (const at::Tensor* tensor : {&q_conv_state, &k_conv_state, &v_conv_state, &state})
    if (tensor->defined()) bytes += tensor->nbytes();
  return state.defined() && state.size(0) ? bytes / state.size(0) : 0;
}

GdnMixer::GdnMixer(const GdnConfig& config, const TensorMap& weights, const std::string& prefix)
    : config_(config), prefix_(prefix) {
  if (config_.layer_desc.empty()) config_.layer_desc = prefix;
  config_.validate();
  const int64_t hidden = config_.hidden_size, D = config_.head_dim, H = config_.num_heads();
  const int64_t q_dim = config_.num_q_heads * D, k_dim = config_.num_k_heads * D;
  const int64_t v_dim = config_.num_v_heads * D;
  q_proj_ = take_weight(weights, prefix, "q_proj.weight", {q_dim, hidden});
  k_proj_ = take_weight(weights, prefix, "k_proj.weight", {k_dim, hidden});
  v_proj_ = take_weight(weights, prefix, "v_proj.weight", {v_dim, hidden});
  b_proj_ = take_weight(weights, prefix, "b_proj.weight", {H, hidden});
  gk_proj_ = take_weight(weights, prefix, "gk_proj.weight", {H, hidden});
  A_log_ = take_weight(weights, prefix, "A_log", {H});
  dt_bias_ = take_weight(weights, prefix, "dt_bias", {H});
  if (config_.use_short_conv) {
    const int64_t K = config_.conv_size;
    q_conv_ = take_weight(weights, prefix, "q_conv1d.weight", {q_dim, 1, K});
    k_conv_ = take_weight(weights, prefix, "k_conv1d.weight", {k_dim, 1, K});
    v_conv_ = take_weight(weights, prefix, "v_conv1d.weight", {v_dim, 1, K});
    if (config_.conv_bias) {
      q_conv_bias_ = take_weight(weights, prefix, "q_conv1d.bias", {q_dim});
      k_conv_bias_ = take_weight(weights, prefix, "k_conv1d.bias", {k_dim});
      v_conv_bias_ = take_weight(weights, prefix, "v_conv1d.bias", {v_dim});
    }
  }
  if (config_.use_gate) g_proj_ = take_weight(weights, prefix, "g_proj.weight", {H * D, hidden});
  o_norm_ = take_weight(weights, prefix, "o_norm.weight", {D});
  o_proj_ = take_weight(weights, prefix, "o_proj.weight", {hidden, H * D});
}

std::unique_ptr<LayerCache> GdnMixer::make_cache(int64_t batch, const at::Device& device) const {
  auto cache = std::make_unique<GdnCache>();
  const auto options = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t D = config_.head_dim, H = config_.num_heads();
  if (config_.use_short_conv) {
    const int64_t history = config_.conv_size - 1;
    cache->q_conv_state = at::zeros({batch, config_.num_q_heads * D, history}, options);
    cache->k_conv_state = at::zeros({batch, config_.num_k_heads * D, history}, options);
    cache->v_conv_state = at::zeros({batch, config_.num_v_heads * D, history}, options);
  }
  cache->state = at::zeros({batch, H, D, D}, options);
  return cache;
}

GdnMixer::Inputs GdnMixer::prepare(const at::Tensor& x, GdnCache* cache, const at::Tensor& starts) const {
  const auto ct = ssm_compute_type(x);
  const int64_t batch = x.size(0), length = x.size(1), D = config_.head_dim;
  const int64_t H = config_.num_heads();
  auto branch = [&](const at::Tensor& proj, const at::Tensor& conv, const at::Tensor& conv_bias,
                    at::Tensor* conv_state, int64_t heads) {
    at::Tensor y = project(x, proj).to(ct);
    y = config_.use_short_conv ? causal_conv_silu(y, conv, conv_bias, cache ? conv_state : nullptr, starts)
                               : at::silu(y);
    return expand_heads(y.reshape({batch, length, heads, D}), H / heads);
  };
  Inputs in;
  at::Tensor q = branch(q_proj_, q_conv_, q_conv_bias_, cache ? &cache->q_conv_state : nullptr,
                        config_.num_q_heads);
  at::Tensor k = branch(k_proj_, k_conv_, k_conv_bias_, cache ? &cache->k_conv_state : nullptr,
                        config_.num_k_heads);
  in.v = branch(v_proj_, v_conv_, v_conv_bias_, cache ? &cache->v_conv_state : nullptr,
                config_.num_v_heads);
  in.q = l2_normalize_inside(q, 1.0 / std::sqrt(static_cast<double>(D)));
  in.k = l2_normalize_inside(k, 1.0);
  in.beta = at::sigmoid(project(x, b_proj_).to(ct));
  if (config_.allow_neg_eigval) in.beta = in.beta * 2.0;
  in.g = log_decay(project(x, gk_proj_).to(ct), A_log_, dt_bias_);
  return in;
}

at::Tensor GdnMixer::finish(const at::Tensor& x, const at::Tensor& o, const at::Tensor& gate_projection) const {
  const int64_t batch = o.size(0), length = o.size(1), H = o.size(2), D = o.size(3);
  at::Tensor normed;
  if (config_.use_gate) {
    const at::Tensor gate = (gate_projection.defined() ? gate_projection : project(x, g_proj_))
                                .reshape({batch, length, H, D});
    normed = gated_rms_norm(o, gate, o_norm_, config_.norm_eps, x.scalar_type());
  } else {
    normed = head_rms_norm(o, o_norm_, config_.norm_eps);
  }
  return project(normed.reshape({batch, length, H * D}).to(x.scalar_type()), o_proj_);
}

at::Tensor GdnMixer::forward(const at::Tensor& x, LayerCache* cache) {
  const OutsideAutocast outside_autocast;
  check_mixer_input(x, config_.hidden_size, "GDN", prefix_);
  GdnCache* gdn_cache = typed_cache<GdnCache>(cache, x, "GDN", prefix_);
  if (gdn_cache && x.size(1) == 1) return step(x, *gdn_cache);
  const Inputs in = prepare(x, gdn_cache);
  const at::Tensor o = run_on_state(gdn_cache, x.size(1), in.q.scalar_type(), [&](const at::Tensor& state) {
    return gated_delta_rule_chunked(in.q, in.k, in.v, in.g, in.beta, state, config_.chunk_size);
  });
  return finish(x, o);
}

at::Tensor GdnMixer::forward_documents(const at::Tensor& x, const Documents& documents) {
  if (documents.one_per_row) return forward(x, nullptr);
  const OutsideAutocast outside_autocast;
  check_documents_input(x, documents, config_.hidden_size, "GDN", prefix_);
  const Inputs in = prepare(x, nullptr, documents.starts);
  const at::Tensor o = gated_delta_rule_varlen(in.q, in.k, in.v, in.g, in.beta,
                                               documents.chunks(config_.chunk_size), config_.chunk_size);
  return finish(x, o);
}

at::Tensor GdnMixer::forward_recurrent(const at::Tensor& x, LayerCache* cache) {
  const OutsideAutocast outside_autocast;
  check_mixer_input(x, config_.hidden_size, "GDN", prefix_);
  GdnCache* gdn_cache = typed_cache<GdnCache>(cache, x, "GDN", prefix_);
  const Inputs in = prepare(x, gdn_cache);
  const at::Tensor o = run_on_state(gdn_cache, x.size(1), in.q.scalar_type(), [&](const at::Tensor& state) {
    return gated_delta_rule_recurrent(in.q, in.k, in.v, in.g, in.beta, state);
  });
  return finish(x, o);
}

at::Tensor GdnMixer::step(const at::Tensor& x, LayerCache& cache) {
  const OutsideAutocast outside_autocast;
  check_mixer_input(x, config_.hidden_size, "GDN", prefix_);
  PRIME_CHECK(x.size(1) == 1, "GDN layer ", prefix_, ": step() takes one token, got ", x.size(1));
  GdnCache* gdn_cache = typed_cache<GdnCache>(&cache, x, "GDN", prefix_);
  if (at::Tensor o = fused_step(x, *gdn_cache); o.defined()) return o;
  const Inputs in = prepare(x, gdn_cache);
  if (state_updates_in_place(gdn_cache->state, in.q)) {  // decoding: the cache's own state
    const at::Tensor o = gated_delta_rule_step_in_place(in.q.select(1, 0), in.k.select(1, 0), in.v.select(1, 0),
                                                        in.g.select(1, 0), in.beta.select(1, 0), gdn_cache->state);
    gdn_cache->tokens += 1;
    return finish(x, o.unsqueeze(1));
  }
  const at::Tensor o = run_on_state(gdn_cache, 1, in.q.scalar_type(), [&](const at::Tensor& state) {
    auto [o_token, next] = gated_delta_rule_step(in.q.select(1, 0), in.k.select(1, 0),
                                                 in.v.select(1, 0), in.g.select(1, 0),
                                                 in.beta.select(1, 0), state);
    return std::make_pair(o_token.unsqueeze(1), next);
  });
  return finish(x, o);
}

kernels::GdnDecodeWeights GdnMixer::decode_weights() const {
  kernels::GdnDecodeWeights w;
  static_cast<kernels::DecodeHeads&>(w) = kernels::decode_heads(config_);
  if (config_.use_short_conv) {
    w.q_conv = q_conv_, w.k_conv = k_conv_, w.v_conv = v_conv_;
    w.q_conv_bias = q_conv_bias_, w.k_conv_bias = k_conv_bias_, w.v_conv_bias = v_conv_bias_;
  }
  w.A_log = A_log_;
  w.dt_bias = dt_bias_;
  w.q_scale = 1.0 / std::sqrt(static_cast<double>(config_.head_dim));
  w.beta_scale = config_.allow_neg_eigval ? 2.0 : 1.0;
  return w;
}

namespace {

kernels::GdnDecodeConvStates conv_states(const GdnCache& cache) {
  return {cache.q_conv_state, cache.k_conv_state, cache.v_conv_state};
}

bool fused_serves(const at::Tensor& x, const GdnCache& cache, const kernels::GdnDecodeWeights& w) {
  return state_updates_in_place(cache.state, at::kFloat) && kernels::gdn_decode_inputs_apply(x, w, conv_states(cache));
}

}  // namespace

bool GdnMixer::fused_step_applies(const at::Tensor& x, const LayerCache& cache) const {
  const auto* gdn_cache = dynamic_cast<const GdnCache*>(&cache);
  return gdn_cache && fused_serves(x, *gdn_cache, decode_weights());
}

at::Tensor GdnMixer::fused_step(const at::Tensor& x, GdnCache& cache) {
  const kernels::GdnDecodeWeights w = decode_weights();
  if (!fused_serves(x, cache, w)) return at::Tensor();
  // The token's projections in two launches where the decode kernel serves them: q, k, v and the
  // gate's; b and a.
  const std::vector<at::Tensor> wide = project_token_group(x, {&q_proj_, &k_proj_, &v_proj_, &g_proj_});
  const std::vector<at::Tensor> gates = project_token_group(x, {&b_proj_, &gk_proj_});
  const kernels::GdnDecodeInputs in =
      kernels::gdn_decode_inputs(wide[0], wide[1], wide[2], gates[0], gates[1], w, conv_states(cache));
  const at::Tensor o = gated_delta_rule_step_in_place(in.q, in.k, in.v, in.g, in.beta, cache.state);
  cache.tokens += 1;
  return finish(x, o.unsqueeze(1), config_.use_gate ? wide[3] : at::Tensor());
}

}  // namespace prime::model
