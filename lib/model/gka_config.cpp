// GkaConfig: parsing formats.md's gka_config and refusing what GkaMixer cannot honour.
#include <algorithm>
#include <cmath>
#include <set>

#include "model/gka.h"
#include "util/error.h"

namespace prime::model {

namespace {

using Json = nlohmann::json;

const std::set<std::string>& known_keys() {
  static const std::set<std::string> keys = {
      "hidden_size", "head_dim", "num_q_heads", "num_k_heads", "num_v_heads",
      "use_alpha_connection", "use_v_conv", "use_forgetting_gate", "gla_rescale", "solver_type",
      "bp_lambda", "num_iter", "ridge_strength", "use_gate", "conv_size", "norm_eps",
      "use_forgetting_gate_kk", "use_beta_gate", "chunk_size", "kv_proj_rank",
      "kv_learnable_residual"};
  return keys;
}

UserError option_error(const std::string& layer, const std::string& key, const std::string& what) {
  return user_error(layer, ": gka_config.", key, " ", what);
}

bool read_bool(const Json& config, const std::string& layer, const char* key, bool fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  if (!config[key].is_boolean()) throw option_error(layer, key, "must be true or false");
  return config[key].get<bool>();
}

int64_t read_int(const Json& config, const std::string& layer, const char* key, int64_t fallback,
                 bool required = false) {
  if (!config.contains(key) || config[key].is_null()) {
    if (required) throw option_error(layer, key, "is missing");
    return fallback;
  }
  if (!config[key].is_number_integer()) throw option_error(layer, key, "must be an integer");
  return config[key].get<int64_t>();
}

double read_number(const Json& config, const std::string& layer, const char* key,
                   double fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  if (!config[key].is_number()) throw option_error(layer, key, "must be a number");
  return config[key].get<double>();
}

// Casts to `type` (no-op when it already is); an undefined tensor (an absent optional weight,
}  // namespace

GkaConfig GkaConfig::from_json(const nlohmann::json& config, const std::string& layer_desc) {
  if (!config.is_object()) throw user_error(layer_desc, ": gka_config must be a JSON object");
  for (const auto& item : config.items())
    if (!known_keys().count(item.key()))
      throw option_error(layer_desc, item.key(), "is not a known GKA option");
  GkaConfig out;
  out.layer_desc = layer_desc;
  out.hidden_size = read_int(config, layer_desc, "hidden_size", 0, true);
  out.head_dim = read_int(config, layer_desc, "head_dim", 0, true);
  out.num_q_heads = read_int(config, layer_desc, "num_q_heads", 0, true);
  out.num_k_heads = read_int(config, layer_desc, "num_k_heads", out.num_q_heads);
  out.num_v_heads = read_int(config, layer_desc, "num_v_heads", out.num_q_heads);
  out.use_alpha_connection = read_bool(config, layer_desc, "use_alpha_connection", true);
  out.use_v_conv = read_bool(config, layer_desc, "use_v_conv", true);
  out.use_forgetting_gate = read_bool(config, layer_desc, "use_forgetting_gate", true);
  out.gla_rescale = read_bool(config, layer_desc, "gla_rescale", true);
  if (config.contains("solver_type") && !config["solver_type"].is_null()) {
    if (!config["solver_type"].is_string())
      throw option_error(layer_desc, "solver_type", "must be a string");
    out.solver_type = config["solver_type"].get<std::string>();
  }
  out.bp_lambda = read_bool(config, layer_desc, "bp_lambda", true);
  const int64_t num_iter = read_int(config, layer_desc, "num_iter", 30);
  if (num_iter < 0 || num_iter > 10000)
    throw option_error(layer_desc, "num_iter", "must be in [0, 10000], got " + std::to_string(num_iter));
  out.num_iter = static_cast<int>(num_iter);
  out.ridge_strength = read_number(config, layer_desc, "ridge_strength", 0.02);
  out.use_gate = read_bool(config, layer_desc, "use_gate", true);
  out.conv_size = read_int(config, layer_desc, "conv_size", 4);
  out.norm_eps = read_number(config, layer_desc, "norm_eps", 1e-6);
  out.use_forgetting_gate_kk = read_bool(config, layer_desc, "use_forgetting_gate_kk", true);
  out.use_beta_gate = read_bool(config, layer_desc, "use_beta_gate", true);
  out.chunk_size = read_int(config, layer_desc, "chunk_size", 64);
  if (config.contains("kv_proj_rank") && !config["kv_proj_rank"].is_null())
    throw option_error(layer_desc, "kv_proj_rank",
                       "is set (" + config["kv_proj_rank"].dump() +
                           "): low-rank k/v head expansion is not supported; use null");
  if (read_bool(config, layer_desc, "kv_learnable_residual", false))
    throw option_error(layer_desc, "kv_learnable_residual",
                       "is true: learnable k/v head mixing is not supported; use false");
  out.validate();
  return out;
}

void GkaConfig::validate() const {
  const std::string& layer = layer_desc;
  auto positive = [&](const char* key, int64_t value) {
    if (value <= 0) throw option_error(layer, key, "must be positive, got " + std::to_string(value));
  };
  positive("hidden_size", hidden_size);
  positive("head_dim", head_dim);
  positive("num_q_heads", num_q_heads);
  positive("num_k_heads", num_k_heads);
  positive("num_v_heads", num_v_heads);
  positive("conv_size", conv_size);
  positive("chunk_size", chunk_size);
  const int64_t heads = num_heads();
  auto divides = [&](const char* key, int64_t count) {
    if (heads % count != 0)
      throw option_error(layer, key,
                         "= " + std::to_string(count) + " does not divide the expanded head count " +
                             std::to_string(heads) + " (repeat-interleave needs whole groups)");
  };
  divides("num_q_heads", num_q_heads);
  divides("num_k_heads", num_k_heads);
  divides("num_v_heads", num_v_heads);
  if (solver_type != "chebyshev")
    throw option_error(layer, "solver_type",
                       "is \"" + solver_type + "\"; only \"chebyshev\" is supported");
  if (num_iter < 0) throw option_error(layer, "num_iter", "must be >= 0");
  // lambda = r ||H||_F: with r <= 0 the system is singular once D exceeds the tokens seen.
  if (!(ridge_strength > 0.0) || !std::isfinite(ridge_strength))
    throw option_error(layer, "ridge_strength", "must be a positive number");
  if (!(norm_eps > 0.0) || !std::isfinite(norm_eps))
    throw option_error(layer, "norm_eps", "must be a positive number");
}

int64_t GkaConfig::num_heads() const {
  return std::max({num_q_heads, num_k_heads, num_v_heads});
}

}  // namespace prime::model
