// The store's value types: state and objective names, and reading a number out of a trial.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>

#include "store/store.h"
#include "util/error.h"

namespace prime::store {

namespace {
std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}
std::string trim(const std::string& text) {
  const auto begin = text.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(" \t") - begin + 1);
}
}  // namespace

std::string trial_state_name(TrialState state) {
  switch (state) {
    case TrialState::Waiting: return "WAITING";
    case TrialState::Running: return "RUNNING";
    case TrialState::Complete: return "COMPLETE";
    case TrialState::Pruned: return "PRUNED";
    case TrialState::Fail: return "FAIL";
  }
  throw internal_error("unknown trial state ", static_cast<int>(state));
}

TrialState parse_trial_state(const std::string& name) {
  const std::string key = lower(name);
  for (TrialState state : {TrialState::Waiting, TrialState::Running, TrialState::Complete, TrialState::Pruned,
                           TrialState::Fail})
    if (lower(trial_state_name(state)) == key) return state;
  throw user_error("unknown trial state '", name, "' (expected WAITING, RUNNING, COMPLETE, PRUNED or FAIL)");
}

Objective parse_objective(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || trim(text.substr(0, colon)).empty())
    throw user_error("objective '", text, "' must be NAME:min or NAME:max");
  const std::string direction = lower(trim(text.substr(colon + 1)));
  Objective objective;
  objective.name = trim(text.substr(0, colon));
  if (direction == "min" || direction == "minimize")
    objective.direction = Direction::Minimize;
  else if (direction == "max" || direction == "maximize")
    objective.direction = Direction::Maximize;
  else
    throw user_error("objective '", text, "': direction must be min or max, not '", direction, "'");
  return objective;
}

std::vector<Objective> parse_objectives(const std::string& text) {
  std::vector<Objective> objectives;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t comma = std::min(text.find(',', begin), text.size());
    objectives.push_back(parse_objective(text.substr(begin, comma - begin)));
    begin = comma + 1;
  }
  return objectives;
}

std::string objective_text(const Objective& objective) {
  return objective.name + (objective.direction == Direction::Minimize ? ":min" : ":max");
}

const TrialParam* Trial::param(const std::string& name) const {
  for (const TrialParam& p : params)
    if (p.name == name) return &p;
  return nullptr;
}

bool Trial::infeasible() const {
  const auto it = attrs.find("infeasible");
  return it != attrs.end() && (it->second == "1" || lower(it->second) == "true");
}

namespace {
std::optional<double> number_in(const std::string& text) {
  const std::string trimmed = trim(text);
  if (trimmed.empty()) return std::nullopt;
  char* end = nullptr;
  const double value = std::strtod(trimmed.c_str(), &end);
  if (end != trimmed.c_str() + trimmed.size() || std::isnan(value)) return std::nullopt;
  return value;
}
}  // namespace

std::optional<double> trial_number(const Trial& trial, const Study& study, const std::string& name) {
  for (size_t index = 0; index < study.objectives.size(); ++index)
    if (study.objectives[index].name == name) {
      if (index < trial.values.size() && trial.values[index] && !std::isnan(*trial.values[index]))
        return trial.values[index];
      break;  // an objective without a value may still be recorded as an attribute
    }
  if (const auto it = trial.attrs.find(name); it != trial.attrs.end())
    if (auto value = number_in(it->second)) return value;
  if (const TrialParam* p = trial.param(name)) return number_in(p->value);
  return std::nullopt;
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace prime::store
