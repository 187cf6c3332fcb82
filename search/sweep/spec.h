// A sweep spec (prime-search --spec, design/formats.md "Sweep spec"): what to convert, how to
// prime and evaluate each trial, the search space, the sampler, objectives, constraints and early
// stopping. Parsing checks everything before a trial runs: an unknown key, a bad value or an
// objective no trial measures is a UserError naming its JSON path (e.g. `space.lr.log_uniform`).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "store/store.h"
#include "train/train_options.h"

namespace prime::search {

// One searched parameter: a list of choices, or a range (random sampler only).
struct ParamDomain {
  enum class Kind { Categorical, Uniform, LogUniform };
  std::string name;
  Kind kind = Kind::Categorical;
  std::vector<nlohmann::json> choices;  // categorical
  double low = 0, high = 0;             // ranges
};

// `state_bytes <= 64MiB`: a trial whose measured value breaks it is kept and marked infeasible.
struct Constraint {
  std::string text;  // as written
  std::string metric;
  std::string op;  // <=, <, >=, >
  double bound = 0;
  bool satisfied(double value) const;
};

// Successive halving: at rung k (after min_tokens × eta^k training tokens of a trial, counted
// over all its stages) a trial goes on only when it is in the best 1/eta of the trials that
// reached that rung; with several metrics "best" is the Pareto rank of their values.
struct EarlyStopping {
  std::vector<store::Objective> metrics;  // empty: no early stopping
  int64_t eta = 3;
  int64_t min_tokens = 0;
  int64_t min_trials = 0;  // trials at a rung before anything is pruned there (default eta)
  bool enabled() const { return !metrics.empty(); }
};

struct StageSpec {
  train::Stage stage = train::Stage::Align;
  nlohmann::json options = nlohmann::json::object();  // its own prime-train values (tokens, lr, ...)
  std::string path;                                   // "stages[0]", for messages
};

struct DataSpec {
  std::vector<std::string> train;
  std::string val;
  // A generated stream (demos): `tokens` ids below `vocab`, written under the study's directory.
  bool synthetic = false;
  int64_t synthetic_tokens = 0;
  int64_t synthetic_vocab = 0;
  uint64_t synthetic_seed = 0;
};

struct EvalSpec {
  bool ppl = false;
  int64_t ppl_ctx = 0;         // 0: the last stage's seq_len
  int64_t ppl_max_tokens = 0;  // 0: the whole val shard
  std::vector<std::string> recall;  // needle, mqar
  std::vector<int64_t> recall_lengths;  // empty: the probes' defaults
  int64_t recall_trials = 10;
  bool decode = false;
  int64_t decode_batch = 1, decode_prompt = 256, decode_tokens = 16;
};

// Trains the source itself first, next-token, once per study (a synthetic source has random
// weights: a teacher worth distilling from has to learn the data first).
struct PretrainSpec {
  nlohmann::json options = nlohmann::json::object();  // prime-train values for the pt stage
};

struct SamplerSpec {
  std::string kind = "grid";  // grid | random
  uint64_t seed = 0;
  int64_t trials = 0;  // random: how many
};

struct SweepSpec {
  std::string study, description;
  std::string source;
  std::string teacher;  // empty: the source ("same")
  DataSpec data;
  std::optional<PretrainSpec> pretrain;
  std::vector<ParamDomain> space;
  nlohmann::json convert = nlohmann::json::object();  // fixed conversion values (layer, ratio, ...)
  std::vector<StageSpec> stages;
  nlohmann::json train = nlohmann::json::object();  // prime-train values for every stage
  EvalSpec eval;
  SamplerSpec sampler;
  std::vector<store::Objective> objectives;
  std::vector<Constraint> constraints;
  EarlyStopping early_stopping;
  int retries = 1;  // re-queues of a trial whose worker died
  nlohmann::json raw;  // the spec as given
};

// Parses and checks a spec. UserError naming the JSON path of the first problem.
SweepSpec parse_spec(const nlohmann::json& json);
// Reads `path` (UserError for a missing file or bad JSON, with line and column) and parses it.
SweepSpec read_spec(const std::filesystem::path& path);

// The names a trial measures (what objectives, constraints and early stopping may name), given
// what the spec asks to evaluate.
std::vector<std::string> measured_names(const SweepSpec& spec);

// "64MiB" (binary), "64MB" (decimal), "256K" / "2M" / "1B" (binary, as token counts), "1e-3".
// UserError naming `path` otherwise.
double parse_quantity(const nlohmann::json& value, const std::string& path);

// The conversion parameter names (layer, ratio, placement, init, convert_seed) and the
// prime-train names a spec may set (train, stages[i], space, "STAGE.NAME" in space).
const std::vector<std::string>& convert_names();
const std::vector<std::string>& train_names();

// Sets one prime-train value (`name` as in train_names()) on options; UserError naming `path`.
void apply_train_value(train::TrainOptions& options, const std::string& name, const nlohmann::json& value,
                       const std::string& path);

}  // namespace prime::search
