#include "search/sweep/sampler.h"

#include <cmath>
#include <cstdio>
#include <random>

#include "util/error.h"

namespace prime::search {

namespace {

// A uniform double in [0, 1) from the generator's bits (no distribution class: their output is
// not specified across standard libraries, and a seed must mean the same trials everywhere).
double unit_uniform(std::mt19937_64& generator) { return static_cast<double>(generator() >> 11) * 0x1.0p-53; }

}  // namespace

std::vector<ParamSet> sample_trials(const SweepSpec& spec) {
  std::vector<ParamSet> trials;
  if (spec.sampler.kind == "grid") {
    size_t total = 1;
    for (const auto& domain : spec.space) {
      total *= domain.choices.size();
      if (total > 100000) throw user_error("space: the grid has more than 100,000 combinations; use the random sampler");
    }
    for (size_t index = 0; index < total; ++index) {
      ParamSet params;
      size_t rest = index;
      // Mixed-radix digits, the last parameter fastest.
      std::vector<size_t> digits(spec.space.size());
      for (size_t d = spec.space.size(); d-- > 0;) {
        digits[d] = rest % spec.space[d].choices.size();
        rest /= spec.space[d].choices.size();
      }
      for (size_t d = 0; d < spec.space.size(); ++d) params.emplace_back(spec.space[d].name, spec.space[d].choices[digits[d]]);
      trials.push_back(std::move(params));
    }
    return trials;
  }
  std::mt19937_64 generator(spec.sampler.seed);
  for (int64_t trial = 0; trial < spec.sampler.trials; ++trial) {
    ParamSet params;
    for (const auto& domain : spec.space) {
      const double u = unit_uniform(generator);
      switch (domain.kind) {
        case ParamDomain::Kind::Categorical: {
          const size_t pick = std::min(domain.choices.size() - 1, static_cast<size_t>(u * domain.choices.size()));
          params.emplace_back(domain.name, domain.choices[pick]);
          break;
        }
        case ParamDomain::Kind::Uniform:
          params.emplace_back(domain.name, domain.low + u * (domain.high - domain.low));
          break;
        case ParamDomain::Kind::LogUniform:
          params.emplace_back(domain.name, std::exp(std::log(domain.low) + u * (std::log(domain.high) - std::log(domain.low))));
          break;
      }
    }
    trials.push_back(std::move(params));
  }
  return trials;
}

std::vector<store::TrialParam> to_trial_params(const ParamSet& params) {
  std::vector<store::TrialParam> out;
  for (const auto& [name, value] : params) {
    store::TrialParam param;
    param.name = name;
    if (value.is_string()) {
      param.value = value.get<std::string>();
    } else if (value.is_number_integer()) {
      param.value = value.dump(), param.kind = "int";
    } else if (value.is_number()) {
      // The shortest text that reads back as the same double: 1e-09, not 1.0000000000000001e-09.
      param.value = nlohmann::json(value.get<double>()).dump(), param.kind = "float";
    } else {
      param.value = value.dump();  // true / false
    }
    out.push_back(std::move(param));
  }
  return out;
}

nlohmann::json param_json(const store::TrialParam& param) {
  if (param.kind == "int") return std::stoll(param.value);
  if (param.kind == "float") return std::stod(param.value);
  if (param.value == "true" || param.value == "false") return param.value == "true";
  return param.value;
}

}  // namespace prime::search
