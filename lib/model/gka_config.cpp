// GkaConfig: parsing formats.md's gka_config and refusing what GkaMixer cannot honour.
#include <algorithm>
#include <cmath>

#include "io/model_config.h"
#include "model/gka.h"
#include "model/ssm_config_json.h"
#include "util/error.h"

namespace prime::model {

GkaConfig GkaConfig::from_json(const nlohmann::json& config, const std::string& layer_desc,
                               const io::ModelConfig* base) {
  namespace cj = config_json;
  const std::string what = cj::describe(layer_desc, "gka_config");
  cj::require_object(config, what);
  cj::refuse_unknown(config, what,
                     {"hidden_size", "head_dim", "num_q_heads", "num_k_heads", "num_v_heads",
                      "use_alpha_connection", "use_v_conv", "use_forgetting_gate", "gla_rescale",
                      "solver_type", "bp_lambda", "num_iter", "ridge_strength", "use_gate",
                      "conv_size", "norm_eps", "use_forgetting_gate_kk", "use_beta_gate",
                      "chunk_size", "kv_proj_rank", "kv_learnable_residual"});
  GkaConfig out;
  out.layer_desc = layer_desc;
  // Structural fields: from the base config when there is one (as HMF derives them).
  auto derived = [&](int64_t value) { return base ? std::optional<int64_t>(value) : std::nullopt; };
  out.hidden_size = cj::get_structural(config, what, "hidden_size",
                                       derived(base ? base->hidden_size : 0), "hidden_size");
  out.head_dim =
      cj::get_structural(config, what, "head_dim", derived(base ? base->head_dim : 0), "head_dim");
  out.num_q_heads = cj::get_structural(config, what, "num_q_heads",
                                       derived(base ? base->num_attention_heads : 0),
                                       "num_attention_heads");
  if (base) {
    out.num_k_heads = cj::get_structural(config, what, "num_k_heads", base->num_key_value_heads,
                                         "num_key_value_heads");
    out.num_v_heads = cj::get_structural(config, what, "num_v_heads", base->num_key_value_heads,
                                         "num_key_value_heads");
  } else {  // absent k/v head counts default to the query heads
    out.num_k_heads = cj::get_int(config, what, "num_k_heads", out.num_q_heads);
    out.num_v_heads = cj::get_int(config, what, "num_v_heads", out.num_q_heads);
  }
  // User options.
  out.use_alpha_connection = cj::get_bool(config, what, "use_alpha_connection", true);
  out.use_v_conv = cj::get_bool(config, what, "use_v_conv", true);
  out.use_forgetting_gate = cj::get_bool(config, what, "use_forgetting_gate", true);
  out.gla_rescale = cj::get_bool(config, what, "gla_rescale", true);
  out.solver_type = cj::get_string(config, what, "solver_type", "chebyshev");
  out.bp_lambda = cj::get_bool(config, what, "bp_lambda", true);
  const int64_t num_iter = cj::get_int(config, what, "num_iter", 30);
  if (num_iter < 0 || num_iter > 10000)
    throw cj::option_error(what, "num_iter", "must be in [0, 10000], got ", num_iter);
  out.num_iter = static_cast<int>(num_iter);
  out.ridge_strength = cj::get_double(config, what, "ridge_strength", 0.02);
  out.use_gate = cj::get_bool(config, what, "use_gate", true);
  out.conv_size = cj::get_int(config, what, "conv_size", 4);
  out.norm_eps = cj::get_double(config, what, "norm_eps", 1e-6);
  out.use_forgetting_gate_kk = cj::get_bool(config, what, "use_forgetting_gate_kk", true);
  out.use_beta_gate = cj::get_bool(config, what, "use_beta_gate", true);
  out.chunk_size = cj::get_int(config, what, "chunk_size", 64);
  if (cj::has(config, "kv_proj_rank"))
    throw cj::option_error(what, "kv_proj_rank", "= ", config.at("kv_proj_rank").dump(),
                           ": low-rank k/v head expansion is not supported; use null");
  if (cj::get_bool(config, what, "kv_learnable_residual", false))
    throw cj::option_error(what, "kv_learnable_residual",
                           "= true: learnable k/v head mixing is not supported; use false");
  out.validate();
  return out;
}

void GkaConfig::validate() const {
  namespace cj = config_json;
  const std::string what = cj::describe(layer_desc, "gka_config");
  cj::validate_heads(what, hidden_size, head_dim, num_q_heads, num_k_heads, num_v_heads);
  cj::require_positive(what, "conv_size", conv_size);
  cj::require_positive(what, "chunk_size", chunk_size);
  if (solver_type != "chebyshev")
    throw cj::option_error(what, "solver_type", "= \"", solver_type,
                           "\"; only \"chebyshev\" is supported");
  if (num_iter < 0) throw cj::option_error(what, "num_iter", "must be >= 0");
  // lambda = r ||H||_F: with r <= 0 the system is singular once D exceeds the tokens seen.
  if (!(ridge_strength > 0.0) || !std::isfinite(ridge_strength))
    throw cj::option_error(what, "ridge_strength", "must be a positive number");
  if (!(norm_eps > 0.0) || !std::isfinite(norm_eps))
    throw cj::option_error(what, "norm_eps", "must be a positive number");
}

int64_t GkaConfig::num_heads() const { return config_json::expanded_heads(num_q_heads, num_k_heads, num_v_heads); }

}  // namespace prime::model
