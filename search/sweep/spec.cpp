#include "search/sweep/spec.h"

#include <algorithm>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "convert/plan.h"
#include "convert/weight_map.h"
#include "util/error.h"

namespace prime::search {

using nlohmann::json;

namespace {

std::string at_key(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }
std::string at_index(const std::string& path, size_t index) { return path + "[" + std::to_string(index) + "]"; }

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

void require_object(const json& value, const std::string& path) {
  if (!value.is_object()) throw user_error(path, ": expected an object, got ", value.dump());
}

void check_keys(const json& object, const std::string& path, const std::vector<std::string>& allowed) {
  require_object(object, path.empty() ? "the spec" : path);
  for (const auto& item : object.items())
    if (std::find(allowed.begin(), allowed.end(), item.key()) == allowed.end())
      throw user_error(at_key(path, item.key()), ": unknown key (", path.empty() ? "the spec" : path, " takes ",
                       joined(allowed), ")");
}

std::string string_at(const json& object, const std::string& key, const std::string& path) {
  const json& value = object.at(key);
  if (!value.is_string() || value.get<std::string>().empty())
    throw user_error(at_key(path, key), ": expected a non-empty string, got ", value.dump());
  return value.get<std::string>();
}

bool is_name(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Checks one conversion value the way prime-convert would (without a model at hand).
void check_convert_value(const std::string& name, const json& value, const std::string& path) {
  if (name == "convert_seed") {
    if (!value.is_number_integer() || value.get<int64_t>() < 0)
      throw user_error(path, ": expected a whole number >= 0, got ", value.dump());
    return;
  }
  if (!value.is_string()) throw user_error(path, ": expected a string, got ", value.dump());
  const std::string text = value.get<std::string>();
  try {
    if (name == "layer") convert::parse_layer_type(text);
    else if (name == "ratio") convert::parse_ratio(text);
    else if (name == "init") convert::parse_init_recipe(text);
  } catch (const UserError& error) {
    throw user_error(path, ": ", error.what());
  }
  if (name == "placement") {
    static const std::regex forms(R"(uniform|middle|keep:[0-9, ]+|pattern:.+|scores:.+)");
    if (!std::regex_match(text, forms))
      throw user_error(path, ": '", text, "' is no placement (uniform, middle, keep:I,J,..., pattern:P, scores:FILE)");
  }
}

// A value of `name` at `path`: a conversion value, a prime-train value, or "STAGE.NAME".
void check_value(const SweepSpec& spec, const std::string& name, const json& value, const std::string& path) {
  if (is_name(convert_names(), name)) return check_convert_value(name, value, path);
  std::string train_name = name;
  if (const auto dot = name.find('.'); dot != std::string::npos) {
    const std::string stage = name.substr(0, dot);
    train_name = name.substr(dot + 1);
    const bool known = std::any_of(spec.stages.begin(), spec.stages.end(),
                                   [&](const StageSpec& s) { return stage == train::stage_name(s.stage); });
    if (!known) throw user_error(path, ": no stage '", stage, "' in stages");
  }
  if (!is_name(train_names(), train_name))
    throw user_error(path, ": '", name, "' is not a searchable parameter (conversion: ", joined(convert_names()),
                     "; prime-train: ", joined(train_names()), "; one stage's: STAGE.NAME)");
  train::TrainOptions scratch;
  apply_train_value(scratch, train_name, value, path);
}

void parse_space(SweepSpec& spec, const json& space) {
  require_object(space, "space");
  if (space.empty()) throw user_error("space: the search space is empty (give at least one parameter with its choices)");
  for (const auto& item : space.items()) {
    const std::string path = at_key("space", item.key());
    ParamDomain domain;
    domain.name = item.key();
    const json& value = item.value();
    if (value.is_array()) {
      if (value.empty()) throw user_error(path, ": an empty list of choices (the search space is empty)");
      for (size_t i = 0; i < value.size(); ++i) {
        check_value(spec, domain.name, value[i], at_index(path, i));
        domain.choices.push_back(value[i]);
      }
    } else if (value.is_object()) {
      check_keys(value, path, {"uniform", "log_uniform"});
      if (value.size() != 1) throw user_error(path, ": give one of uniform, log_uniform");
      const std::string kind = value.items().begin().key();
      const json& range = value.at(kind);
      const std::string range_path = at_key(path, kind);
      if (!range.is_array() || range.size() != 2 || !range[0].is_number() || !range[1].is_number())
        throw user_error(range_path, ": expected [low, high], got ", range.dump());
      domain.kind = kind == "uniform" ? ParamDomain::Kind::Uniform : ParamDomain::Kind::LogUniform;
      domain.low = range[0].get<double>(), domain.high = range[1].get<double>();
      if (!(domain.low < domain.high)) throw user_error(range_path, ": low must be below high");
      if (domain.kind == ParamDomain::Kind::LogUniform && !(domain.low > 0))
        throw user_error(range_path, ": a log-uniform range needs low > 0");
      check_value(spec, domain.name, domain.low, range_path);
    } else {
      throw user_error(path, ": expected a list of choices or {\"uniform\"|\"log_uniform\": [low, high]}, got ",
                       value.dump());
    }
    spec.space.push_back(std::move(domain));
  }
}

void parse_data(SweepSpec& spec, const json& data) {
  check_keys(data, "data", {"train", "val", "synthetic"});
  if (data.contains("train") == data.contains("synthetic"))
    throw user_error("data: give either data.train (token shards) or data.synthetic (a generated stream)");
  if (data.contains("train")) {
    const json& train = data["train"];
    if (train.is_string()) spec.data.train.push_back(string_at(data, "train", "data"));
    else if (train.is_array() && !train.empty())
      for (size_t i = 0; i < train.size(); ++i) {
        if (!train[i].is_string()) throw user_error(at_index("data.train", i), ": expected a shard path");
        spec.data.train.push_back(train[i].get<std::string>());
      }
    else throw user_error("data.train: expected a shard path or a list of them");
    if (data.contains("val")) spec.data.val = string_at(data, "val", "data");
  } else {
    const json& synthetic = data["synthetic"];
    check_keys(synthetic, "data.synthetic", {"tokens", "vocab", "seed"});
    if (data.contains("val")) throw user_error("data.val: a synthetic stream makes its own validation shard");
    if (!synthetic.contains("tokens") || !synthetic.contains("vocab"))
      throw user_error("data.synthetic: needs tokens and vocab");
    spec.data.synthetic = true;
    spec.data.synthetic_tokens = static_cast<int64_t>(parse_quantity(synthetic["tokens"], "data.synthetic.tokens"));
    spec.data.synthetic_vocab = static_cast<int64_t>(parse_quantity(synthetic["vocab"], "data.synthetic.vocab"));
    if (spec.data.synthetic_tokens < 1024) throw user_error("data.synthetic.tokens: at least 1K tokens");
    if (spec.data.synthetic_vocab < 16 || spec.data.synthetic_vocab > 65535)
      throw user_error("data.synthetic.vocab: between 16 and 65535");
    if (synthetic.contains("seed")) {
      if (!synthetic["seed"].is_number_integer() || synthetic["seed"].get<int64_t>() < 0)
      throw user_error("data.synthetic.seed: expected a whole number >= 0");
      spec.data.synthetic_seed = synthetic["seed"].get<uint64_t>();
    }
  }
}

void parse_train_block(const SweepSpec& spec, const json& block, const std::string& path,
                       const std::vector<std::string>& extra_keys, json& into) {
  std::vector<std::string> allowed = train_names();
  allowed.insert(allowed.end(), extra_keys.begin(), extra_keys.end());
  check_keys(block, path, allowed);
  for (const auto& item : block.items()) {
    if (is_name(extra_keys, item.key())) continue;
    check_value(spec, item.key(), item.value(), at_key(path, item.key()));
    into[item.key()] = item.value();
  }
}

void parse_eval(SweepSpec& spec, const json& eval) {
  check_keys(eval, "eval", {"ppl", "recall", "decode"});
  if (eval.contains("ppl")) {
    const json& ppl = eval["ppl"];
    if (ppl.is_boolean()) spec.eval.ppl = ppl.get<bool>();
    else {
      check_keys(ppl, "eval.ppl", {"ctx", "max_tokens"});
      spec.eval.ppl = true;
      if (ppl.contains("ctx")) spec.eval.ppl_ctx = static_cast<int64_t>(parse_quantity(ppl["ctx"], "eval.ppl.ctx"));
      if (ppl.contains("max_tokens"))
        spec.eval.ppl_max_tokens = static_cast<int64_t>(parse_quantity(ppl["max_tokens"], "eval.ppl.max_tokens"));
    }
    if (spec.eval.ppl && spec.data.val.empty() && !spec.data.synthetic)
      throw user_error("eval.ppl: needs a validation shard (data.val)");
  }
  if (eval.contains("recall")) {
    json probes = eval["recall"];
    if (probes.is_object()) {
      check_keys(probes, "eval.recall", {"probes", "lengths", "trials"});
      if (probes.contains("lengths"))
        for (size_t i = 0; i < probes["lengths"].size(); ++i)
          spec.eval.recall_lengths.push_back(
              static_cast<int64_t>(parse_quantity(probes["lengths"][i], at_index("eval.recall.lengths", i))));
      if (probes.contains("trials")) spec.eval.recall_trials = probes["trials"].get<int64_t>();
      probes = probes.value("probes", json::array({"needle", "mqar"}));
    }
    if (!probes.is_array()) throw user_error("eval.recall: expected a list of probes (needle, mqar)");
    for (size_t i = 0; i < probes.size(); ++i) {
      if (probes[i] != "needle" && probes[i] != "mqar")
        throw user_error(at_index("eval.recall", i), ": unknown probe ", probes[i].dump(), " (needle, mqar)");
      spec.eval.recall.push_back(probes[i].get<std::string>());
    }
  }
  if (eval.contains("decode")) {
    const json& decode = eval["decode"];
    check_keys(decode, "eval.decode", {"batch", "prompt", "tokens"});
    spec.eval.decode = true;
    if (decode.contains("batch")) spec.eval.decode_batch = static_cast<int64_t>(parse_quantity(decode["batch"], "eval.decode.batch"));
    if (decode.contains("prompt"))
      spec.eval.decode_prompt = static_cast<int64_t>(parse_quantity(decode["prompt"], "eval.decode.prompt"));
    if (decode.contains("tokens"))
      spec.eval.decode_tokens = static_cast<int64_t>(parse_quantity(decode["tokens"], "eval.decode.tokens"));
    if (spec.eval.decode_batch < 1 || spec.eval.decode_prompt < 1 || spec.eval.decode_tokens < 1)
      throw user_error("eval.decode: batch, prompt and tokens must be >= 1");
  }
}

void parse_sampler(SweepSpec& spec, const json& sampler) {
  check_keys(sampler, "sampler", {"kind", "seed", "trials"});
  if (sampler.contains("kind")) spec.sampler.kind = string_at(sampler, "kind", "sampler");
  if (spec.sampler.kind != "grid" && spec.sampler.kind != "random")
    throw user_error("sampler.kind: '", spec.sampler.kind, "' is no sampler (grid, random)");
  if (sampler.contains("seed")) {
    if (!sampler["seed"].is_number_integer() || sampler["seed"].get<int64_t>() < 0)
      throw user_error("sampler.seed: expected a whole number >= 0");
    spec.sampler.seed = sampler["seed"].get<uint64_t>();
  }
  if (spec.sampler.kind == "random") {
    if (!sampler.contains("trials") || !sampler["trials"].is_number_integer() || sampler["trials"].get<int64_t>() < 1)
      throw user_error("sampler.trials: the random sampler needs how many trials to draw (a whole number >= 1)");
    spec.sampler.trials = sampler["trials"].get<int64_t>();
  } else if (sampler.contains("trials") || sampler.contains("seed")) {
    throw user_error("sampler: the grid sampler runs every combination once (seed and trials are for random)");
  }
}

}  // namespace

SweepSpec parse_spec(const json& spec_json) {
  check_keys(spec_json, "", {"study", "description", "source", "teacher", "data", "pretrain", "space", "convert",
                              "stages", "train", "eval", "sampler", "objectives", "constraints", "early_stopping",
                              "retries"});
  SweepSpec spec;
  spec.raw = spec_json;
  for (const char* key : {"study", "source", "data", "space", "objectives"})
    if (!spec_json.contains(key)) throw user_error(key, ": required");
  spec.study = string_at(spec_json, "study", "");
  spec.source = string_at(spec_json, "source", "");
  if (spec_json.contains("description")) spec.description = string_at(spec_json, "description", "");
  if (spec_json.contains("teacher") && string_at(spec_json, "teacher", "") != "same")
    spec.teacher = spec_json["teacher"].get<std::string>();
  parse_data(spec, spec_json["data"]);
  if (spec_json.contains("pretrain")) {
    if (!spec.teacher.empty()) throw user_error("pretrain: trains the source, so teacher must be \"same\"");
    spec.pretrain.emplace();
    parse_train_block(spec, spec_json["pretrain"], "pretrain", {}, spec.pretrain->options);
  }
  if (spec_json.contains("stages")) {
    const json& stages = spec_json["stages"];
    if (!stages.is_array()) throw user_error("stages: expected a list of {\"stage\": align|distill|pt, ...}");
    for (size_t i = 0; i < stages.size(); ++i) {
      StageSpec stage;
      stage.path = at_index("stages", i);
      require_object(stages[i], stage.path);
      if (!stages[i].contains("stage")) throw user_error(stage.path, ".stage: required (align, distill, pt)");
      const std::string name = string_at(stages[i], "stage", stage.path);
      try {
        stage.stage = train::parse_stage(name);
      } catch (const UserError&) {
        throw user_error(stage.path, ".stage: unknown stage '", name, "' (align, distill, pt)");
      }
      parse_train_block(spec, stages[i], stage.path, {"stage"}, stage.options);
      spec.stages.push_back(std::move(stage));
    }
  }
  if (spec_json.contains("train")) parse_train_block(spec, spec_json["train"], "train", {}, spec.train);
  if (spec_json.contains("convert")) {
    check_keys(spec_json["convert"], "convert", convert_names());
    for (const auto& item : spec_json["convert"].items())
      check_value(spec, item.key(), item.value(), at_key("convert", item.key()));
    spec.convert = spec_json["convert"];
  }
  parse_space(spec, spec_json["space"]);
  for (const char* needed : {"layer", "ratio"}) {
    const bool searched = std::any_of(spec.space.begin(), spec.space.end(), [&](const ParamDomain& d) { return d.name == needed; });
    if (!searched && !spec.convert.contains(needed))
      throw user_error("space.", needed, ": required (in space, or fixed in convert.", needed, ")");
  }
  if (spec_json.contains("eval")) parse_eval(spec, spec_json["eval"]);
  if (spec_json.contains("sampler")) parse_sampler(spec, spec_json["sampler"]);
  if (spec.sampler.kind == "grid")
    for (const auto& domain : spec.space)
      if (domain.kind != ParamDomain::Kind::Categorical)
        throw user_error("space.", domain.name, ": a range needs the random sampler (sampler.kind \"random\"); "
                         "the grid sampler takes lists of choices");
  if (spec_json.contains("retries")) {
    if (!spec_json["retries"].is_number_integer() || spec_json["retries"].get<int>() < 0)
      throw user_error("retries: expected a whole number >= 0");
    spec.retries = spec_json["retries"].get<int>();
  }

  const std::vector<std::string> measured = measured_names(spec);
  auto require_measured = [&](const std::string& name, const std::string& path) {
    if (!is_name(measured, name))
      throw user_error(path, ": no trial produces '", name, "'; with this spec's eval a trial measures ",
                       joined(measured), " (val_* need eval.ppl, recall and *_acc eval.recall, decode_tok_s and "
                       "state_bytes eval.decode)");
  };
  const json& objectives = spec_json["objectives"];
  if (!objectives.is_array() || objectives.empty())
    throw user_error("objectives: expected a non-empty list such as [\"val_ppl:min\", \"decode_tok_s:max\"]");
  for (size_t i = 0; i < objectives.size(); ++i) {
    const std::string path = at_index("objectives", i);
    if (!objectives[i].is_string()) throw user_error(path, ": expected \"NAME:min\" or \"NAME:max\"");
    try {
      spec.objectives.push_back(store::parse_objective(objectives[i].get<std::string>()));
    } catch (const UserError& error) {
      throw user_error(path, ": ", error.what());
    }
    require_measured(spec.objectives.back().name, path);
    for (size_t j = 0; j + 1 < spec.objectives.size(); ++j)
      if (spec.objectives[j].name == spec.objectives.back().name) throw user_error(path, ": a repeated objective");
  }
  if (spec_json.contains("constraints")) {
    const json& constraints = spec_json["constraints"];
    if (!constraints.is_array()) throw user_error("constraints: expected a list such as [\"state_bytes <= 64MiB\"]");
    static const std::regex form(R"(\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*(\S+)\s*)");
    for (size_t i = 0; i < constraints.size(); ++i) {
      const std::string path = at_index("constraints", i);
      std::smatch match;
      const std::string text = constraints[i].is_string() ? constraints[i].get<std::string>() : "";
      if (!std::regex_match(text, match, form))
        throw user_error(path, ": expected \"METRIC <= VALUE\" (or <, >=, >), got ", constraints[i].dump());
      Constraint constraint;
      constraint.text = text, constraint.metric = match[1], constraint.op = match[2];
      constraint.bound = parse_quantity(json(match[3].str()), path);
      require_measured(constraint.metric, path);
      spec.constraints.push_back(constraint);
    }
  }
  if (spec_json.contains("early_stopping")) {
    const json& rule = spec_json["early_stopping"];
    check_keys(rule, "early_stopping", {"kind", "metric", "metrics", "eta", "min_tokens", "min_trials"});
    if (string_at(rule, "kind", "early_stopping") != "successive_halving")
      throw user_error("early_stopping.kind: '", rule["kind"].get<std::string>(), "' is no rule (successive_halving)");
    if (rule.contains("metric") == rule.contains("metrics"))
      throw user_error("early_stopping: give metric (one) or metrics (several: Pareto rank)");
    std::vector<std::pair<std::string, std::string>> names;  // text, path
    if (rule.contains("metric")) names.emplace_back(string_at(rule, "metric", "early_stopping"), "early_stopping.metric");
    else
      for (size_t i = 0; i < rule["metrics"].size(); ++i)
        names.emplace_back(rule["metrics"][i].is_string() ? rule["metrics"][i].get<std::string>() : "",
                           at_index("early_stopping.metrics", i));
    static const std::set<std::string> step_metrics = {"loss", "tokens_per_s", "grad_norm"};
    static const std::set<std::string> eval_metrics = {"val_loss", "val_ppl"};
    for (const auto& [text, path] : names) {
      store::Objective metric;
      if (text.find(':') != std::string::npos) {
        try {
          metric = store::parse_objective(text);
        } catch (const UserError& error) {
          throw user_error(path, ": ", error.what());
        }
      } else {
        metric.name = text;
        if (metric.name != "loss" && !eval_metrics.count(metric.name))
          throw user_error(path, ": say the direction of '", text, "' (", text, ":min or ", text, ":max)");
      }
      if (!step_metrics.count(metric.name) && !eval_metrics.count(metric.name))
        throw user_error(path, ": '", metric.name, "' is no intermediate value (training: loss, tokens_per_s, "
                         "grad_norm; with train.eval_every and a validation shard: val_loss, val_ppl)");
      if (eval_metrics.count(metric.name) && (!spec.train.contains("eval_every") || (spec.data.val.empty() && !spec.data.synthetic)))
        throw user_error(path, ": ", metric.name, " is measured only with train.eval_every and a validation shard");
      spec.early_stopping.metrics.push_back(metric);
    }
    if (spec.early_stopping.metrics.empty()) throw user_error("early_stopping.metrics: an empty list");
    if (rule.contains("eta")) {
      if (!rule["eta"].is_number_integer() || rule["eta"].get<int64_t>() < 2) throw user_error("early_stopping.eta: a whole number >= 2");
      spec.early_stopping.eta = rule["eta"].get<int64_t>();
    }
    spec.early_stopping.min_tokens = rule.contains("min_tokens")
                                         ? static_cast<int64_t>(parse_quantity(rule["min_tokens"], "early_stopping.min_tokens"))
                                         : 1;
    if (spec.early_stopping.min_tokens < 1) throw user_error("early_stopping.min_tokens: must be >= 1");
    spec.early_stopping.min_trials = spec.early_stopping.eta;
    if (rule.contains("min_trials")) {
      if (!rule["min_trials"].is_number_integer() || rule["min_trials"].get<int64_t>() < 1)
        throw user_error("early_stopping.min_trials: a whole number >= 1");
      spec.early_stopping.min_trials = rule["min_trials"].get<int64_t>();
    }
  }
  return spec;
}

SweepSpec read_spec(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw user_error("--spec ", path.string(), ": cannot read the file");
  std::stringstream text;
  text << in.rdbuf();
  json parsed;
  try {
    parsed = json::parse(text.str());
  } catch (const json::parse_error& error) {
    throw user_error("--spec ", path.string(), ": not valid JSON (", error.what(), ")");
  }
  try {
    return parse_spec(parsed);
  } catch (const UserError& error) {
    throw user_error("--spec ", path.string(), ": ", error.what());
  }
}

}  // namespace prime::search
