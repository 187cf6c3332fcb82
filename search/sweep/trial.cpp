#include "search/sweep/trial.h"

#include <numeric>

#include "convert/convert.h"
#include "eval/decode_bench.h"
#include "eval/eval_run.h"
#include "io/atomic_dir.h"
#include "store/store.h"
#include "train/trainer.h"
#include "util/cli.h"
#include "util/error.h"

namespace prime::search {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string param_string(const json& value) { return value.is_string() ? value.get<std::string>() : value.dump(); }

// The value of `name` for this trial: its parameter when searched, else the fixed one.
const json* convert_value(const SweepSpec& spec, const ParamSet& params, const std::string& name) {
  for (const auto& [param, value] : params)
    if (param == name) return &value;
  return spec.convert.contains(name) ? &spec.convert.at(name) : nullptr;
}

// Forwards a stage's records with steps and tokens counted over the whole trial, keeps the
// latest value of every metric, and asks the prune check after each record. Each stage starts
// with a mark (store::kStageMetric at its first step), by which the curves are cut per stage.
class TrialRecorder : public MetricsSink {
 public:
  TrialRecorder(MetricsSink* sink, const PruneCheck& prune) : sink_(sink), prune_(prune) {}
  void start_stage(int number, int64_t step_offset, int64_t token_offset) {
    step_offset_ = step_offset, token_offset_ = token_offset;
    if (sink_) sink_->write({"stage", step_offset + 1, {{store::kStageMetric, static_cast<double>(number)}}, {}});
  }
  void write(const MetricRecord& record) override {
    MetricRecord shifted = record;
    shifted.step += step_offset_;
    int64_t tokens = token_offset_;
    if (auto found = record.values.find("tokens"); found != record.values.end()) {
      tokens += static_cast<int64_t>(found->second);
      shifted.values["tokens"] = static_cast<double>(tokens);
    }
    if (sink_) sink_->write(shifted);
    if (record.values.count("tokens")) tokens_ = tokens;
    for (const auto& [name, value] : record.values) latest_[name] = value;
    if (prune_ && prune_(shifted, latest_)) {
      if (sink_) sink_->flush();
      throw TrialPruned(shifted.step);
    }
  }
  void flush() override {
    if (sink_) sink_->flush();
  }
  int64_t tokens() const { return tokens_; }  // over all stages, as of the latest record

 private:
  MetricsSink* sink_;
  const PruneCheck& prune_;
  int64_t step_offset_ = 0, token_offset_ = 0, tokens_ = 0;
  std::map<std::string, double> latest_;
};

double mean(const std::vector<double>& values) {
  return values.empty() ? 0 : std::accumulate(values.begin(), values.end(), 0.0) / values.size();
}

void evaluate(const SweepSpec& spec, const StudyInputs& inputs, const std::string& model, int64_t seq_len,
              std::ostream& log, std::map<std::string, double>& measured) {
  const at::Device device = parse_device(inputs.device);
  const std::string dtype = device.is_cpu() ? "fp32" : "bf16";
  if (spec.eval.ppl || !spec.eval.recall.empty()) {
    eval::EvalRequest request;
    request.model = model;
    request.device = inputs.device;
    request.dtype = dtype;
    if (spec.eval.ppl) {
      request.ppl_shard = inputs.val_data;
      request.ppl.ctx = spec.eval.ppl_ctx > 0 ? spec.eval.ppl_ctx : seq_len;
      request.ppl.max_tokens = spec.eval.ppl_max_tokens;
    }
    if (!spec.eval.recall.empty()) {
      request.recall = true;
      request.probes.clear();
      for (const auto& probe : spec.eval.recall) request.probes += (request.probes.empty() ? "" : ",") + probe;
      request.trials = spec.eval.recall_trials;
      if (!spec.eval.recall_lengths.empty()) request.needle.lengths = request.mqar.lengths = spec.eval.recall_lengths;
      if (!inputs.val_data.empty()) request.haystack = inputs.val_data;
    }
    const eval::EvalResult result = eval::run_eval(request, log);
    if (result.ppl) {
      measured["val_ppl"] = result.ppl->ppl;
      measured["val_loss"] = result.ppl->nll_mean;
      measured["bits_per_byte"] = result.ppl->bits_per_byte;
    }
    std::vector<double> recall;
    if (result.needle) {
      std::vector<double> cells;
      for (const auto& cell : result.needle->cells) cells.push_back(cell.accuracy());
      recall.push_back(measured["needle_acc"] = mean(cells));
    }
    if (result.mqar) {
      std::vector<double> cells;
      for (const auto& cell : result.mqar->cells)
        if (!cell.skipped) cells.push_back(cell.accuracy());
      recall.push_back(measured["mqar_acc"] = mean(cells));
    }
    if (!recall.empty()) measured["recall"] = mean(recall);
  }
  if (spec.eval.decode) {
    eval::BenchModel bench = eval::load_bench_model(model, model::LoadOptions{device, parse_dtype_flag(dtype)});
    eval::DecodeBenchOptions options;
    options.new_tokens = spec.eval.decode_tokens;
    const std::string mode = device.is_cuda() ? "graph" : "static";
    const eval::DecodeBenchRow row =
        eval::run_decode_point(bench, spec.eval.decode_batch, spec.eval.decode_prompt, mode, options);
    if (!row.error.empty()) throw user_error("decode benchmark: ", row.error);
    measured["decode_tok_s"] = row.decode_tokens_per_s;
    measured["prefill_tok_s"] = row.prefill_tokens_per_s;
    measured["kv_bytes"] = static_cast<double>(row.kv_bytes_per_sequence);
    measured["ssm_state_bytes"] = static_cast<double>(row.state_bytes_per_sequence);
    measured["state_bytes"] = static_cast<double>(row.kv_bytes_per_sequence + row.state_bytes_per_sequence);
    measured["params"] = static_cast<double>(bench.parameters);
    log << "decode (" << row.mode << ", batch " << row.batch << ", prompt " << row.prompt << "): "
        << row.decode_tokens_per_s << " tok/s; cache per sequence " << row.kv_bytes_per_sequence << " B KV + "
        << row.state_bytes_per_sequence << " B SSM state\n";
  }
}

}  // namespace

convert::ConvertOptions trial_convert_options(const SweepSpec& spec, const StudyInputs& inputs, const ParamSet& params,
                                              const fs::path& dir) {
  convert::ConvertOptions options;
  options.source = inputs.source;
  options.out = dir / "model";
  options.layers.layer = param_string(*convert_value(spec, params, "layer"));
  options.layers.ratio = param_string(*convert_value(spec, params, "ratio"));
  if (const json* placement = convert_value(spec, params, "placement")) {
    const std::string text = param_string(*placement);
    // keep: and pattern: decide the layers themselves, so the ratio (and for a pattern the
    // type) given alongside is not passed on.
    if (text.rfind("keep:", 0) == 0) {
      options.layers.keep_attention = text.substr(5);
      options.layers.ratio.clear();
    } else if (text.rfind("pattern:", 0) == 0) {
      options.layers.pattern = text.substr(8);
      options.layers.ratio.clear();
      options.layers.layer.clear();
    } else if (text.rfind("scores:", 0) == 0) {
      options.layers.scores = text.substr(7);
    } else {
      options.layers.placement = text;
    }
  }
  if (const json* init = convert_value(spec, params, "init")) options.init = param_string(*init);
  if (const json* seed = convert_value(spec, params, "convert_seed")) options.seed = seed->get<uint64_t>();
  options.command_line = "prime-search (study " + spec.study + ", " + dir.filename().string() + ")";
  return options;
}

std::vector<train::TrainOptions> trial_stage_options(const SweepSpec& spec, const StudyInputs& inputs,
                                                     const ParamSet& params, const fs::path& dir) {
  std::vector<train::TrainOptions> stages;
  std::string model = (dir / "model").string();
  for (size_t i = 0; i < spec.stages.size(); ++i) {
    const StageSpec& stage = spec.stages[i];
    const std::string name = train::stage_name(stage.stage);
    train::TrainOptions options;
    options.device = inputs.device;
    options.dtype = parse_device(inputs.device).is_cpu() ? "fp32" : "bf16";
    options.log_every = 10;
    for (const auto& item : spec.train.items()) apply_train_value(options, item.key(), item.value(), "train." + item.key());
    for (const auto& item : stage.options.items())
      apply_train_value(options, item.key(), item.value(), stage.path + "." + item.key());
    for (const auto& [param, value] : params) {
      if (std::find(train_names().begin(), train_names().end(), param) != train_names().end())
        apply_train_value(options, param, value, "space." + param);
      else if (param.rfind(name + ".", 0) == 0)
        apply_train_value(options, param.substr(name.size() + 1), value, "space." + param);
    }
    options.stage = stage.stage;
    options.model = model;
    options.teacher = stage.stage == train::Stage::Pt ? "" : inputs.teacher;
    options.data = inputs.train_data;
    options.val_data.clear();
    if (!inputs.val_data.empty()) options.val_data.push_back(inputs.val_data);
    options.out = (dir / (std::to_string(i + 1) + "-" + name)).string();
    options.save_every = 0;
    options.keep = 1;
    model = options.out + "/final";
    stages.push_back(options);
  }
  return stages;
}

TrialOutcome run_trial(const SweepSpec& spec, const StudyInputs& inputs, const ParamSet& params, const fs::path& dir,
                       std::ostream& log, MetricsSink* sink, const PruneCheck& prune) {
  const convert::ConvertOptions convert_options = trial_convert_options(spec, inputs, params, dir);
  const std::vector<train::TrainOptions> stages = trial_stage_options(spec, inputs, params, dir);
  if (fs::exists(convert_options.out)) io::remove_tree(convert_options.out);
  for (const auto& stage : stages)
    if (fs::exists(stage.out)) io::remove_tree(stage.out);

  TrialOutcome outcome;
  log << "convert " << convert_options.source << " -> " << convert_options.out.string() << "\n";
  const convert::ConversionPlan plan = convert::plan_conversion(convert_options);
  log << plan.plan_target_line() << "\n";
  convert::write_hybrid(plan, convert_options, log, convert::ProgressStyle::Quiet);
  outcome.final_model = convert_options.out.string();

  TrialRecorder recorder(sink, prune);
  int64_t steps = 0, tokens = 0;
  double seconds = 0;
  for (size_t i = 0; i < stages.size(); ++i) {
    recorder.start_stage(static_cast<int>(i) + 1, steps, tokens);
    log << "stage " << i + 1 << "/" << stages.size() << ": " << train::stage_name(stages[i].stage) << "\n";
    train::TrainResult result;
    try {
      result = train::run_training(stages[i], convert_options.command_line, log, &recorder);
    } catch (const TrialPruned& pruned) {
      log << "pruned at step " << pruned.step << " (" << recorder.tokens() << " tokens)\n";
      outcome.pruned = true;
      outcome.pruned_step = pruned.step;
      outcome.measured["train_tokens"] = static_cast<double>(recorder.tokens());
      return outcome;
    }
    steps += result.steps, tokens += result.tokens, seconds += result.seconds;
    outcome.measured["train_loss"] = result.last_loss;
    outcome.final_model = stages[i].out + "/final";
  }
  recorder.flush();
  if (!stages.empty()) {
    outcome.measured["train_seconds"] = seconds;
    outcome.measured["train_tokens"] = static_cast<double>(tokens);
  }
  const int64_t seq_len = stages.empty() ? 256 : stages.back().seq_len;
  evaluate(spec, inputs, outcome.final_model, seq_len, log, outcome.measured);
  return outcome;
}

}  // namespace prime::search
