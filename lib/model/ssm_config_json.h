// Reading an SSM sub-config (gdn_config, mamba2_config) from config.json: typed field access
// whose errors name the layer and the field, and refusal of fields prime does not know.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "util/error.h"

namespace prime::model::config_json {

// `object` must be a JSON object; `what` names it ("gdn_config of model.layers.3.gdn.").
inline void require_object(const nlohmann::json& object, const std::string& what) {
  if (!object.is_object()) throw user_error(what, " must be a JSON object, got ", object.dump());
}

// A field outside `known` might change the math in a way we would silently ignore: refuse it.
inline void refuse_unknown(const nlohmann::json& object, const std::string& what,
                           std::initializer_list<const char*> known) {
  for (const auto& item : object.items()) {
    bool found = false;
    for (const char* name : known) found = found || item.key() == name;
    if (!found)
      throw user_error(what, ": unknown option '", item.key(), "' (not supported by prime)");
  }
}

inline bool has(const nlohmann::json& object, const char* name) {
  return object.contains(name) && !object.at(name).is_null();
}

inline int64_t get_int(const nlohmann::json& object, const std::string& what, const char* name,
                       int64_t fallback, bool required = false) {
  if (!has(object, name)) {
    if (required) throw user_error(what, ": missing required option '", name, "'");
    return fallback;
  }
  const nlohmann::json& value = object.at(name);
  if (!value.is_number_integer())
    throw user_error(what, ": option '", name, "' must be an integer, got ", value.dump());
  return value.get<int64_t>();
}

inline bool get_bool(const nlohmann::json& object, const std::string& what, const char* name,
                     bool fallback) {
  if (!has(object, name)) return fallback;
  const nlohmann::json& value = object.at(name);
  if (!value.is_boolean())
    throw user_error(what, ": option '", name, "' must be true or false, got ", value.dump());
  return value.get<bool>();
}

inline double get_double(const nlohmann::json& object, const std::string& what, const char* name,
                         double fallback) {
  if (!has(object, name)) return fallback;
  const nlohmann::json& value = object.at(name);
  if (!value.is_number())
    throw user_error(what, ": option '", name, "' must be a number, got ", value.dump());
  return value.get<double>();
}

}  // namespace prime::model::config_json
