// The kernels' environment switches (PRIME_KERNELS, PRIME_SSM_CORE, PRIME_GDN_BACKWARD_WALK, …) in one
// form: each names the values it takes; unset or empty takes the first (its default); any other value
// is a UserError that names the variable and lists the values with what each selects. Read at each
// call, so tests and benchmarks switch them within one process.
#pragma once

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace prime::kernels {

template <typename T>
struct SwitchValue {
  const char* text;     // as the variable spells it
  T value;              // what it selects
  const char* meaning;  // for the error message
};

namespace detail {
// The variable's text ("" when unset), and the error for one of none of its values (texts with meanings,
// the first the default).
std::string switch_text(const char* variable);
[[noreturn]] void bad_switch(const char* variable, const std::string& text,
                             const std::vector<std::pair<const char*, const char*>>& values);
}  // namespace detail

// The value `variable` selects among `values` (the first when unset or empty).
template <typename T>
T environment_switch(const char* variable, std::initializer_list<SwitchValue<T>> values) {
  const std::string text = detail::switch_text(variable);
  if (text.empty()) return values.begin()->value;
  for (const SwitchValue<T>& v : values)
    if (text == v.text) return v.value;
  std::vector<std::pair<const char*, const char*>> listed;
  for (const SwitchValue<T>& v : values) listed.emplace_back(v.text, v.meaning);
  detail::bad_switch(variable, text, listed);
}

}  // namespace prime::kernels
