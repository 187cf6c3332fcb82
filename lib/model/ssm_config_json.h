// Reading a layer sub-config (gka_config, gdn_config, mamba2_config, swa_config) from
// config.json: typed field access whose errors name the layer and the field, refusal of fields
// prime does not know, and the structural fields that the base config decides.
//
// Every message has the form "<what>: option '<name>' <problem>", where `what` names the layer
// and the sub-config ("layer 3 (GDN): config.json gdn_config"), so a user can find the line.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

#include "util/error.h"

namespace prime::model::config_json {

// "layer 3 (GDN)" + "gdn_config" -> "layer 3 (GDN): config.json gdn_config" (names the file,
// the object and, in the messages below, the key).
inline std::string describe(const std::string& layer_desc, const char* sub_config) {
  const std::string object = std::string("config.json ") + sub_config;
  return layer_desc.empty() ? object : layer_desc + ": " + object;
}

template <typename... Details>
UserError option_error(const std::string& what, const std::string& name, const Details&... details) {
  return user_error(what, ": option '", name, "' ", details...);
}

// `object` must be a JSON object; `what` names it.
inline void require_object(const nlohmann::json& object, const std::string& what) {
  if (!object.is_object()) throw user_error(what, " must be a JSON object, got ", object.dump());
}

// A field outside `known` might change the math in a way we would silently ignore: refuse it.
inline void refuse_unknown(const nlohmann::json& object, const std::string& what,
                           std::initializer_list<const char*> known) {
  for (const auto& item : object.items()) {
    bool found = false;
    for (const char* name : known) found = found || item.key() == name;
    if (!found) throw option_error(what, item.key(), "is not known (not supported by prime)");
  }
}

inline bool has(const nlohmann::json& object, const char* name) {
  return object.contains(name) && !object.at(name).is_null();
}

inline int64_t get_int(const nlohmann::json& object, const std::string& what, const char* name,
                       int64_t fallback, bool required = false) {
  if (!has(object, name)) {
    if (required) throw option_error(what, name, "is missing");
    return fallback;
  }
  const nlohmann::json& value = object.at(name);
  if (!value.is_number_integer())
    throw option_error(what, name, "must be an integer, got ", value.dump());
  return value.get<int64_t>();
}

inline bool get_bool(const nlohmann::json& object, const std::string& what, const char* name,
                     bool fallback) {
  if (!has(object, name)) return fallback;
  const nlohmann::json& value = object.at(name);
  if (!value.is_boolean())
    throw option_error(what, name, "must be true or false, got ", value.dump());
  return value.get<bool>();
}

inline double get_double(const nlohmann::json& object, const std::string& what, const char* name,
                         double fallback) {
  if (!has(object, name)) return fallback;
  const nlohmann::json& value = object.at(name);
  if (!value.is_number()) throw option_error(what, name, "must be a number, got ", value.dump());
  return value.get<double>();
}

inline std::string get_string(const nlohmann::json& object, const std::string& what,
                              const char* name, const std::string& fallback) {
  if (!has(object, name)) return fallback;
  const nlohmann::json& value = object.at(name);
  if (!value.is_string()) throw option_error(what, name, "must be a string, got ", value.dump());
  return value.get<std::string>();
}

// `value` of option `name` must be positive.
inline void require_positive(const std::string& what, const char* name, int64_t value) {
  if (value <= 0) throw option_error(what, name, "must be positive, got ", value);
}

// The head layout GDN and GKA share: sizes and the q/k/v head counts positive, each count dividing
// the expanded head count H = max(q, k, v) (the heads are repeat-interleaved up to H).
inline int64_t expanded_heads(int64_t q_heads, int64_t k_heads, int64_t v_heads) {
  return std::max({q_heads, k_heads, v_heads});
}
inline void validate_heads(const std::string& what, int64_t hidden_size, int64_t head_dim, int64_t q_heads,
                           int64_t k_heads, int64_t v_heads) {
  require_positive(what, "hidden_size", hidden_size);
  require_positive(what, "head_dim", head_dim);
  require_positive(what, "num_q_heads", q_heads);
  require_positive(what, "num_k_heads", k_heads);
  require_positive(what, "num_v_heads", v_heads);
  const int64_t heads = expanded_heads(q_heads, k_heads, v_heads);
  for (const auto& [name, count] : {std::pair{"num_q_heads", q_heads}, std::pair{"num_k_heads", k_heads},
                                    std::pair{"num_v_heads", v_heads}})
    if (heads % count != 0)
      throw option_error(what, name, "= ", count, " does not divide the expanded head count ", heads,
                         " (repeat-interleave needs whole groups)");
}

// A structural field (sizes, head counts). The reference implementation derives these from the
// base config whatever the sub-config says, so: absent -> `derived`; present -> it must agree
// with `derived`, or the checkpoint describes two different layers and we refuse it naming both
// values. Without a base config (`derived` empty) the field is required.
inline int64_t get_structural(const nlohmann::json& object, const std::string& what,
                              const char* name, const std::optional<int64_t>& derived,
                              const std::string& base_field) {
  if (!has(object, name)) {
    if (!derived) throw option_error(what, name, "is missing");
    return *derived;
  }
  const int64_t value = get_int(object, what, name, 0);
  if (derived && value != *derived)
    throw option_error(what, name, "= ", value, " disagrees with the base config's ", base_field,
                       " = ", *derived);
  return value;
}

// Same for a string field (Mamba-2's hidden_act).
inline void check_structural_string(const nlohmann::json& object, const std::string& what,
                                    const char* name, const std::optional<std::string>& derived,
                                    const std::string& base_field) {
  if (!has(object, name)) return;
  const std::string value = get_string(object, what, name, "");
  if (derived && value != *derived)
    throw option_error(what, name, "= \"", value, "\" disagrees with the base config's ",
                       base_field, " = \"", *derived, "\"");
}

// Same for a number field (Mamba-2's rms_norm_eps).
inline void check_structural_double(const nlohmann::json& object, const std::string& what,
                                    const char* name, const std::optional<double>& derived,
                                    const std::string& base_field) {
  if (!has(object, name)) return;
  const double value = get_double(object, what, name, 0.0);
  if (derived && value != *derived)
    throw option_error(what, name, "= ", value, " disagrees with the base config's ", base_field,
                       " = ", *derived);
}

// Runs `parse`; a JSON library error that slipped past the typed reads above (they should
// catch every type problem first) still ends as a UserError naming the sub-config.
template <typename Parse>
auto guarded(const std::string& what, const Parse& parse) -> decltype(parse()) {
  try {
    return parse();
  } catch (const nlohmann::json::exception& error) {
    throw user_error(what, ": ", error.what());
  }
}

}  // namespace prime::model::config_json
