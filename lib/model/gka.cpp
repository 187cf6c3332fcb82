// GKA weights, the shared input preparation / output stage, and the recurrent and single-step
// forms. Config parsing is in gka_config.cpp, the chunked form in gka_chunked.cpp.
#include "model/gka.h"

#include <cmath>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/ssm_decode/decode_inputs.h"
#include "kernels/ssm_decode/ssm_decode.h"
#include "model/documents.h"
#include "model/gka_core.h"
#include "model/linear.h"
#include "model/ssm_common.h"
#include "util/error.h"

namespace prime::model {

namespace {

// Casts to `type` (no-op when it already is); an undefined tensor (an absent optional weight,
// no H state when num_iter == 0) stays undefined.
at::Tensor to_type(const at::Tensor& t, at::ScalarType type) {
  return t.defined() ? t.to(type) : t;
}

}  // namespace

int64_t GkaCache::bytes_per_sequence() const {
  int64_t bytes = 0;
  for (const at::Tensor* t : {&conv_q, &conv_k, &conv_v, &kk_state, &kv_state})
    if (t->defined() && t->size(0) > 0) bytes += t->nbytes() / t->size(0);
  return bytes;
}

GkaMixer::GkaMixer(GkaConfig config, const TensorMap& weights, const std::string& prefix)
    : config_(std::move(config)), prefix_(prefix) {
  if (config_.layer_desc.empty()) config_.layer_desc = prefix;
  config_.validate();
  const int64_t d = config_.hidden_size, D = config_.head_dim, H = config_.num_heads();
  const int64_t K = config_.conv_size;
  const int64_t q_dim = config_.num_q_heads * D, k_dim = config_.num_k_heads * D,
                v_dim = config_.num_v_heads * D;
  q_proj_ = take_weight(weights, prefix, "q_proj.weight", {q_dim, d});
  k_proj_ = take_weight(weights, prefix, "k_proj.weight", {k_dim, d});
  v_proj_ = take_weight(weights, prefix, "v_proj.weight", {v_dim, d});
  // HMF stores a_proj, A_log and dt_bias even without the forgetting gate.
  if (config_.use_forgetting_gate) {
    a_proj_ = take_weight(weights, prefix, "a_proj.weight", {H, d});
    A_log_ = take_weight(weights, prefix, "A_log", {H});
    dt_bias_ = take_weight(weights, prefix, "dt_bias", {H});
  } else {
    take_optional_weight(weights, prefix, "a_proj.weight", {H, d});
    take_optional_weight(weights, prefix, "A_log", {H});
    take_optional_weight(weights, prefix, "dt_bias", {H});
  }
  if (config_.use_beta_gate) {
    b_proj_ = take_weight(weights, prefix, "b_proj.weight", {H, d});
    b_bias_ = take_weight(weights, prefix, "b_proj.bias", {H});
  }
  if (config_.use_alpha_connection) {
    alpha_proj_ = take_weight(weights, prefix, "alpha_proj.weight", {H, d});
    alpha_bias_ = take_weight(weights, prefix, "alpha_proj.bias", {H});
  }
  q_conv_ = take_weight(weights, prefix, "q_conv1d.weight", {q_dim, 1, K});
  k_conv_ = take_weight(weights, prefix, "k_conv1d.weight", {k_dim, 1, K});
  if (config_.use_v_conv) v_conv_ = take_weight(weights, prefix, "v_conv1d.weight", {v_dim, 1, K});
  if (config_.use_gate) g_proj_ = take_weight(weights, prefix, "g_proj.weight", {H * D, d});
  o_norm_ = take_weight(weights, prefix, "o_norm.weight", {D});
  o_proj_ = take_weight(weights, prefix, "o_proj.weight", {d, H * D});
  for (const at::Tensor* t : {&q_proj_, &k_proj_, &v_proj_, &q_conv_, &k_conv_, &o_norm_, &o_proj_})
    if (!at::isFloatingType(t->scalar_type()))
      throw user_error(prefix, ": GKA weights must be floating point, got ", t->scalar_type());
  // float64 weights (tests, gradient checks) compute in float64; anything else in fp32.
  compute_type_ = q_proj_.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void GkaMixer::set_solve_dtype(std::optional<at::ScalarType> type) {
  PRIME_CHECK(!type || *type == at::kFloat || *type == at::kDouble,
              "GKA solve dtype must be fp32 or float64");
  solve_override_ = type;
}

at::ScalarType GkaMixer::solve_dtype(const at::Device& device) const {
  if (solve_override_) return *solve_override_;
  if (compute_type_ == at::kDouble) return at::kDouble;
  // PRIME_SSM_CORE=bf16 asks for the bf16 forms, which take fp32 operands (kernels/gka_solve).
  return device.is_cuda() && (trained() || kernels::bf16_ssm_core()) ? at::kFloat : at::kDouble;
}

bool GkaMixer::trained() const {
  for (const at::Tensor* t : {&q_proj_, &k_proj_, &v_proj_, &a_proj_, &b_proj_, &b_bias_,
                              &alpha_proj_, &alpha_bias_, &A_log_, &dt_bias_, &q_conv_, &k_conv_,
                              &v_conv_, &g_proj_, &o_norm_, &o_proj_})
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

std::unique_ptr<LayerCache> GkaMixer::make_cache(int64_t batch, const at::Device& device) const {
  const int64_t D = config_.head_dim, H = config_.num_heads(), K = config_.conv_size;
  const auto options = at::TensorOptions().dtype(compute_type_).device(device);
  auto cache = std::make_unique<GkaCache>();
  cache->conv_q = at::zeros({batch, config_.num_q_heads * D, K - 1}, options);
  cache->conv_k = at::zeros({batch, config_.num_k_heads * D, K - 1}, options);
  if (config_.use_v_conv) cache->conv_v = at::zeros({batch, config_.num_v_heads * D, K - 1}, options);
  if (config_.num_iter > 0) cache->kk_state = at::zeros({batch, H, D, D}, options);
  cache->kv_state = at::zeros({batch, H, D, D}, options);
  return cache;
}

GkaMixer::Prepared GkaMixer::prepare(const at::Tensor& x, GkaCache* cache, const at::Tensor& starts) const {
  const int64_t B = x.size(0), T = x.size(1), D = config_.head_dim, H = config_.num_heads();
  const at::ScalarType ct = compute_type_;
  const at::ScalarType solve_type = solve_dtype(x.device());
  // Projections in x's dtype (ssm_common.h's project: bf16 under a bf16 autocast region whatever
  // the master weights' dtype), the short convs in the compute dtype, as in GDN and Mamba-2.
  auto conv_silu = [&](const at::Tensor& weight, const at::Tensor& conv, at::Tensor* state) {
    return causal_conv_silu(project(x, weight).to(ct), conv, at::Tensor(), state, starts);
  };
  // Heads to [B,T,H,D] in the compute dtype, repeat-interleaved from `count` heads (q and k
  // L2-normalised before the expansion: same values, G times less work).
  auto heads = [&](const at::Tensor& flat, int64_t count, bool normalize) {
    at::Tensor per_head = flat.to(ct).reshape({B, T, count, D});
    if (normalize) per_head = l2_normalize(per_head, 1e-6);
    return expand_heads(per_head, H / count);
  };
  Prepared out;
  out.q = heads(conv_silu(q_proj_, q_conv_, cache ? &cache->conv_q : nullptr),
                config_.num_q_heads, true);
  out.k = heads(conv_silu(k_proj_, k_conv_, cache ? &cache->conv_k : nullptr),
                config_.num_k_heads, true);
  const at::Tensor v_flat = config_.use_v_conv
      ? conv_silu(v_proj_, v_conv_, cache ? &cache->conv_v : nullptr)
      : project(x, v_proj_);
  out.v = heads(v_flat, config_.num_v_heads, false);
  // Per-head gates from x in the compute dtype (small matmuls; keeps the gates exact in fp32).
  const at::Tensor xc = x.to(ct);
  if (config_.use_beta_gate) {
    const at::Tensor beta = at::sigmoid(model::linear(xc, to_type(b_proj_, ct), to_type(b_bias_, ct)));
    const at::Tensor scale = (beta + 1e-6).unsqueeze(-1);
    out.k = out.k * scale;
    out.v = out.v * scale;
  }
  if (config_.use_alpha_connection)
    out.alpha = at::sigmoid(model::linear(xc, to_type(alpha_proj_, ct), to_type(alpha_bias_, ct)));
  if (config_.use_forgetting_gate)
    out.log_decay_kv = log_decay(model::linear(xc, to_type(a_proj_, ct)), A_log_, dt_bias_);
  if (config_.use_gate) out.gate = project(x, g_proj_).reshape({B, T, H, D});
  // The recurrence inputs move to the solve dtype (rounding them to fp32 first costs nothing
  // measurable: the layer is well conditioned in its inputs, only the solve is not).
  for (at::Tensor* t : {&out.q, &out.k, &out.v, &out.alpha, &out.log_decay_kv})
    if (t->defined()) *t = t->to(solve_type);
  // The same tensor object, so the chunked form computes the decay weights once.
  if (config_.use_forgetting_gate && config_.use_forgetting_gate_kk) out.log_decay_kk = out.log_decay_kv;
  return out;
}

at::Tensor GkaMixer::finish(const at::Tensor& o, const Prepared& prepared,
                            const at::Tensor& x) const {
  // RMSNorm over each head's D values times o_norm, then (use_gate) times SiLU(g_proj x).
  const at::Tensor oc = o.to(compute_type_);
  at::Tensor y = prepared.gate.defined()
      ? gated_rms_norm(oc, prepared.gate, o_norm_, config_.norm_eps, x.scalar_type())
      : head_rms_norm(oc, o_norm_, config_.norm_eps);
  return project(y.reshape({o.size(0), o.size(1), -1}).to(x.scalar_type()), o_proj_);
}

namespace gka_detail {

at::Tensor recurrent_step(const GkaMixer::Prepared& in, int64_t t, at::Tensor& kk_state,
                          at::Tensor& kv_state, const SolveOptions& options) {
  const at::Tensor q = in.q.select(1, t);  // [B,H,D]
  const at::Tensor k = in.k.select(1, t);
  const at::Tensor v = in.v.select(1, t);
  at::Tensor q_tilde = q;
  if (options.num_iter > 0) {
    at::Tensor H_prev = kk_state;
    if (in.log_decay_kk.defined())
      H_prev = at::exp(in.log_decay_kk.select(1, t)).unsqueeze(-1).unsqueeze(-1) * H_prev;
    const at::Tensor H = H_prev + k.unsqueeze(-1) * k.unsqueeze(-2);
    const at::Tensor frob =
        frobenius_from_square(H.pow(2).sum({-2, -1}), options.bp_lambda).unsqueeze(-1);
    auto apply_H = [&](const at::Tensor& x) { return at::matmul(H, x.unsqueeze(-1)).squeeze(-1); };
    const at::Tensor x = chebyshev_iterate(apply_H, q, frob, options.ridge_strength, options.num_iter);
    q_tilde = alpha_mix(q, x, in.alpha.defined() ? in.alpha.select(1, t) : at::Tensor());
    kk_state = H;
  }
  at::Tensor S_prev = kv_state;
  if (in.log_decay_kv.defined())
    S_prev = at::exp(in.log_decay_kv.select(1, t)).unsqueeze(-1).unsqueeze(-1) * S_prev;
  kv_state = S_prev + k.unsqueeze(-1) * v.unsqueeze(-2);
  // o = scale * S^T q~: row vector q~ times S.
  return at::matmul(q_tilde.unsqueeze(-2), kv_state).squeeze(-2) * options.output_scale;
}

at::Tensor step_in_place(const GkaMixer::Prepared& in, at::Tensor& kk_state, at::Tensor& kv_state,
                         const SolveOptions& options) {
  const kernels::GkaDecodeOptions kernel_options{options.ridge_strength, options.num_iter, options.output_scale};
  const auto token = [](const at::Tensor& t) { return t.defined() ? t.select(1, 0) : t; };
  const at::Tensor q = token(in.q), k = token(in.k), v = token(in.v), alpha = token(in.alpha),
                   decay_kk = token(in.log_decay_kk), decay_kv = token(in.log_decay_kv);
  if (kernels::gka_decode_apply(q, k, v, alpha, decay_kk, decay_kv, kk_state, kv_state, kernel_options))
    return kernels::gka_decode_step(q, k, v, alpha, decay_kk, decay_kv, kk_state, kv_state, kernel_options);
  at::Tensor kk_solve = to_type(kk_state, in.q.scalar_type()), kv_solve = to_type(kv_state, in.q.scalar_type());
  const at::Tensor o = recurrent_step(in, 0, kk_solve, kv_solve, options);
  store_state(kk_state, kk_solve);
  store_state(kv_state, kv_solve);
  return o;
}

}  // namespace gka_detail

namespace {

gka_detail::SolveOptions solve_options(const GkaConfig& config) {
  gka_detail::SolveOptions options;
  options.ridge_strength = config.ridge_strength;
  options.num_iter = config.num_iter;
  options.bp_lambda = config.bp_lambda;
  options.output_scale =
      config.gla_rescale ? 1.0 / std::sqrt(static_cast<double>(config.head_dim)) : 1.0;
  return options;
}

}  // namespace

at::Tensor GkaMixer::forward(const at::Tensor& x, LayerCache* cache) {
  const OutsideAutocast outside_autocast;
  check_mixer_input(x, config_.hidden_size, "GKA", prefix_);
  if (x.size(1) == 0) return at::zeros_like(x);  // nothing to mix; the cache is untouched
  if (cache && x.size(1) == 1) return step(x, *cache);
  GkaCache* gka_cache = typed_cache<GkaCache>(cache, x, "GKA", prefix_);
  std::unique_ptr<LayerCache> fresh;
  if (!gka_cache) {
    fresh = make_cache(x.size(0), x.device());
    gka_cache = static_cast<GkaCache*>(fresh.get());
  }
  const Prepared prepared = prepare(x, gka_cache);
  const at::ScalarType solve_type = prepared.q.scalar_type();
  gka_detail::ChunkedResult result = gka_detail::chunked_core(
      prepared, to_type(gka_cache->kk_state, solve_type), to_type(gka_cache->kv_state, solve_type),
      config_.chunk_size, solve_options(config_));
  store_state(gka_cache->kk_state, result.kk_state);
  store_state(gka_cache->kv_state, result.kv_state);
  gka_cache->tokens += x.size(1);
  return finish(result.o, prepared, x);
}

at::Tensor GkaMixer::forward_documents(const at::Tensor& x, const Documents& documents) {
  if (documents.one_per_row) return forward(x, nullptr);
  const OutsideAutocast outside_autocast;
  check_documents_input(x, documents, config_.hidden_size, "GKA", prefix_);
  const Prepared prepared = prepare(x, nullptr, documents.starts);
  const at::Tensor o = gka_detail::chunked_varlen(prepared, documents.chunks(config_.chunk_size), config_.chunk_size,
                                                  solve_options(config_));
  return finish(o, prepared, x);
}

at::Tensor GkaMixer::forward_recurrent(const at::Tensor& x, LayerCache* cache) {
  const OutsideAutocast outside_autocast;
  check_mixer_input(x, config_.hidden_size, "GKA", prefix_);
  if (x.size(1) == 0) return at::zeros_like(x);
  GkaCache* gka_cache = typed_cache<GkaCache>(cache, x, "GKA", prefix_);
  std::unique_ptr<LayerCache> fresh;
  if (!gka_cache) {
    fresh = make_cache(x.size(0), x.device());
    gka_cache = static_cast<GkaCache*>(fresh.get());
  }
  const Prepared prepared = prepare(x, gka_cache);
  const gka_detail::SolveOptions options = solve_options(config_);
  // Within one call the states stay in the solve dtype, as in the chunked form.
  at::Tensor kk_state = to_type(gka_cache->kk_state, prepared.q.scalar_type());
  at::Tensor kv_state = to_type(gka_cache->kv_state, prepared.q.scalar_type());
  std::vector<at::Tensor> outputs;
  outputs.reserve(static_cast<size_t>(x.size(1)));
  for (int64_t t = 0; t < x.size(1); ++t)
    outputs.push_back(gka_detail::recurrent_step(prepared, t, kk_state, kv_state, options));
  store_state(gka_cache->kk_state, kk_state);
  store_state(gka_cache->kv_state, kv_state);
  gka_cache->tokens += x.size(1);
  return finish(at::stack(outputs, 1), prepared, x);
}

at::Tensor GkaMixer::step(const at::Tensor& x, LayerCache& cache) {
  const OutsideAutocast outside_autocast;
  check_mixer_input(x, config_.hidden_size, "GKA", prefix_);
  PRIME_CHECK(x.size(1) == 1, "GKA step takes one token, got ", x.size(1));
  GkaCache& gka_cache = *typed_cache<GkaCache>(&cache, x, "GKA", prefix_);
  Prepared prepared = fused_prepare(x, gka_cache);
  if (!prepared.q.defined()) prepared = prepare(x, &gka_cache);
  // On CUDA one kernel does the step with the cache's states updated in place (kernels/ssm_decode).
  const at::Tensor o =
      gka_detail::step_in_place(prepared, gka_cache.kk_state, gka_cache.kv_state, solve_options(config_));
  gka_cache.tokens += 1;
  return finish(o.unsqueeze(1), prepared, x);
}

kernels::GkaDecodeWeights GkaMixer::decode_weights() const {
  kernels::GkaDecodeWeights w;
  static_cast<kernels::DecodeHeads&>(w) = kernels::decode_heads(config_);
  w.q_conv = q_conv_, w.k_conv = k_conv_, w.v_conv = v_conv_;
  w.b_proj = b_proj_, w.b_bias = b_bias_;
  w.alpha_proj = alpha_proj_, w.alpha_bias = alpha_bias_;
  if (config_.use_forgetting_gate) w.a_proj = a_proj_, w.A_log = A_log_, w.dt_bias = dt_bias_;
  return w;
}

namespace {

kernels::GkaDecodeConvStates conv_states(const GkaCache& cache) {
  return {cache.conv_q, cache.conv_k, cache.conv_v};
}

}  // namespace

bool GkaMixer::fused_step_applies(const at::Tensor& x, const LayerCache& cache) const {
  const auto* gka_cache = dynamic_cast<const GkaCache*>(&cache);
  return gka_cache && kernels::gka_decode_inputs_apply(x, decode_weights(), conv_states(*gka_cache));
}

GkaMixer::Prepared GkaMixer::fused_prepare(const at::Tensor& x, GkaCache& cache) const {
  const kernels::GkaDecodeWeights w = decode_weights();
  if (!kernels::gka_decode_inputs_apply(x, w, conv_states(cache))) return {};
  const int64_t B = x.size(0), H = config_.num_heads(), D = config_.head_dim;
  const std::vector<at::Tensor> wide = project_token_group(x, {&q_proj_, &k_proj_, &v_proj_, &g_proj_});
  const kernels::GkaDecodeInputs in =
      kernels::gka_decode_inputs(x, wide[0], wide[1], wide[2], w, conv_states(cache), solve_dtype(x.device()));
  const auto token = [](const at::Tensor& t) { return t.defined() ? t.unsqueeze(1) : t; };
  Prepared out;
  out.q = token(in.q), out.k = token(in.k), out.v = token(in.v), out.alpha = token(in.alpha);
  out.log_decay_kv = token(in.log_decay);
  if (config_.use_forgetting_gate_kk) out.log_decay_kk = out.log_decay_kv;
  if (config_.use_gate) out.gate = wide[3].reshape({B, 1, H, D});
  return out;
}

at::Tensor gka_chebyshev_solve(const at::Tensor& H, const at::Tensor& q, double ridge_strength,
                               int num_iter, bool bp_lambda) {
  PRIME_CHECK(H.dim() >= 2 && H.size(-1) == H.size(-2) && q.size(-1) == H.size(-1));
  const at::Tensor Hc = H.to(q.scalar_type());
  const at::Tensor frob =
      gka_detail::frobenius_from_square(Hc.pow(2).sum({-2, -1}), bp_lambda).unsqueeze(-1);
  auto apply_H = [&](const at::Tensor& x) { return at::matmul(Hc, x.unsqueeze(-1)).squeeze(-1); };
  return gka_detail::chebyshev_iterate(apply_H, q, frob, ridge_strength, num_iter);
}

}  // namespace prime::model
