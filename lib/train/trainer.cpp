#include "train/trainer.h"

#include <ATen/core/grad_mode.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "eval/logits_fn.h"
#include "io/checkpoint.h"
#include "eval/perplexity.h"
#include "train/autocast.h"
#include "train/batches.h"
#include "train/checkpoint.h"
#include "train/distributed.h"
#include "train/models.h"
#include "train/run_dir.h"
#include "train/step_loss.h"
#include "train/throughput.h"
#include "util/cli.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::train {
namespace fs = std::filesystem;
namespace {

struct StepPlan {
  int64_t total_steps = 0;
  int64_t sequences_per_step = 0;  // global
  int64_t micro_sequences = 0;     // per rank per pass
  int64_t accumulation = 0;        // passes per step per rank
};

StepPlan plan_steps(const TrainOptions& options, int64_t world) {
  if (options.seq_len < 2) throw user_error("--seq-len must be at least 2");
  if (options.batch_tokens < options.seq_len || options.batch_tokens % options.seq_len)
    throw user_error("--batch-tokens (", options.batch_tokens, ") must be a multiple of --seq-len (", options.seq_len, ")");
  StepPlan plan;
  plan.sequences_per_step = options.batch_tokens / options.seq_len;
  if (plan.sequences_per_step % world)
    throw user_error("--batch-tokens gives ", plan.sequences_per_step, " sequences per step, not divisible by ", world,
                     " ranks");
  const int64_t per_rank = plan.sequences_per_step / world;
  const int64_t micro_tokens = options.micro_batch_tokens ? options.micro_batch_tokens : per_rank * options.seq_len;
  if (micro_tokens % options.seq_len || per_rank % (micro_tokens / options.seq_len))
    throw user_error("--micro-batch-tokens (", micro_tokens, ") must be a multiple of --seq-len dividing the ",
                     per_rank * options.seq_len, " tokens each rank takes per step");
  plan.micro_sequences = micro_tokens / options.seq_len;
  plan.accumulation = per_rank / plan.micro_sequences;
  if (options.tokens < options.batch_tokens)
    throw user_error("--tokens (", options.tokens, ") is smaller than one step of --batch-tokens (", options.batch_tokens,
                     ")");
  plan.total_steps = options.tokens / options.batch_tokens;
  return plan;
}

std::string human_count(double value) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(value >= 1e9 ? 2 : 1);
  if (value >= 1e9) out << value / 1e9 << "B";
  else if (value >= 1e6) out << value / 1e6 << "M";
  else if (value >= 1e3) out << value / 1e3 << "K";
  else out << std::setprecision(0) << value;
  return out.str();
}

std::string human_seconds(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  std::ostringstream out;
  if (s >= 3600) out << s / 3600 << "h" << std::setw(2) << std::setfill('0') << (s % 3600) / 60 << "m";
  else if (s >= 60) out << s / 60 << "m" << std::setw(2) << std::setfill('0') << s % 60 << "s";
  else out << s << "s";
  return out.str();
}

}  // namespace

static TrainResult run_training_unguarded(const TrainOptions& requested, const std::string& command_line,
                                          std::ostream& log, MetricsSink* extra_metrics) {
  TrainOptions options = requested;
  const auto started = std::chrono::steady_clock::now();
  Distributed dist = Distributed::from_environment(parse_device(options.device), options.dist_backend);
  const bool lead = dist.rank() == 0;
  if (options.out.empty()) throw user_error("--out RUN_DIR is required");
  prepare_run_dir(options);
  dist.barrier();  // every rank checks --out before the lead writes into it
  const bool needs_teacher = options.stage != Stage::Pt;
  if (needs_teacher && options.teacher.empty())
    throw user_error("--stage ", stage_name(options.stage), " needs --teacher (the frozen source model)");
  if (!needs_teacher && !options.teacher.empty())
    throw user_error("--stage pt trains on next-token loss alone; --teacher is not used (drop it)");
  if (options.save_every < 0 || options.keep < 1 || options.eval_every < 0 || options.max_bad_steps < 1)
    throw user_error("--save-every/--eval-every must be >= 0, --keep and --max-bad-steps >= 1");
  const StepPlan plan = plan_steps(options, dist.world());

  const at::Device device = dist.local_device(parse_device(options.device));
  const at::ScalarType dtype = parse_dtype_flag(options.dtype);
  if (dtype != at::kFloat && dtype != at::kBFloat16)
    throw user_error("--dtype ", options.dtype, ": prime-train takes fp32 or bf16 (CUDA autocast)");
  if (device.is_cpu() && dtype != at::kFloat)
    throw user_error("--dtype ", options.dtype, " trains on CUDA (bf16 autocast); on the CPU use --dtype fp32");
  const bool autocast = device.is_cuda() && dtype != at::kFloat;

  // Data first: a bad shard should fail before minutes of model loading.
  DataOptions data_options;
  data_options.shards = options.data;
  data_options.seq_len = options.seq_len;
  data_options.sequences_per_micro_batch = plan.micro_sequences;
  data_options.seed = options.seed;
  data_options.rank = dist.rank();
  data_options.world = dist.world();
  TrainData data(data_options);

  ModelSetup setup;
  setup.teacher_spec = options.teacher;
  setup.groups = parse_groups(options.train.empty() ? default_groups(options.stage) : options.train);
  setup.device = device;
  setup.dtype = dtype;
  fs::path resume_from;
  if (options.resume) {
    const auto checkpoints = list_checkpoints(options.out);
    if (checkpoints.empty()) throw user_error("--resume ", options.out, ": the run has no checkpoint yet");
    resume_from = checkpoints.back();
    setup.student_spec = resume_from.string();
  } else {
    setup.student_spec = options.model;
  }
  RunModels models = build_run_models(setup);
  const int64_t vocab = models.student->config().vocab_size;
  if (data.max_token_id() >= vocab)
    throw user_error("--data holds token id ", data.max_token_id(), ", beyond the model's vocabulary of ", vocab);
  if (options.stage == Stage::Align && models.replaced_layers.empty() && options.align_layers != AlignLayers::None)
    throw user_error("--align-layers ", align_layers_name(options.align_layers),
                     ": the student has no layer of another type than the teacher's");

  AdamWOptions adam;
  adam.beta1 = options.beta1, adam.beta2 = options.beta2, adam.weight_decay = options.weight_decay;
  AdamW optimizer(models.trained, adam);
  TrainerCounters counters;
  counters.seed = options.seed;
  if (options.resume) {
    LoadedTrainerState state = read_trainer_state(resume_from);
    optimizer.load_state(state.optimizer);
    at::NoGradGuard no_grad;
    for (auto& parameter : models.trained)
      if (auto found = state.master.find(parameter.name); found != state.master.end())
        parameter.tensor.copy_(found->second);
    counters = state.counters;
    data.seek(counters.data_position);
    if (lead) log << "resuming " << options.out << " from " << resume_from.filename().string() << " (step "
                  << counters.step << ", " << counters.tokens << " tokens)\n";
  } else if (lead) {
    write_run_json(options, command_line, models,
                   {{"steps", plan.total_steps}, {"sequences_per_step", plan.sequences_per_step},
                    {"gradient_accumulation", plan.accumulation}, {"world_size", dist.world()},
                    {"dist_backend", dist.backend()}});
  }
  dist.broadcast_parameters(models.trained);

  MetricsFanout metrics;
  if (lead) {
    metrics.add(std::make_unique<JsonlMetrics>((fs::path(options.out) / "metrics.jsonl").string(),
                                               options.resume ? counters.step + 1 : -1));
    if (!options.metrics.empty())
      metrics.add(std::make_unique<JsonlMetrics>(options.metrics, options.resume ? counters.step + 1 : -1));
  }
  auto record = [&](const MetricRecord& r) {
    if (!lead) return;
    metrics.write(r);
    if (extra_metrics) extra_metrics->write(r);
  };

  Schedule schedule;
  schedule.kind = options.schedule;
  schedule.lr = options.lr;
  schedule.warmup_steps = options.warmup;
  schedule.total_steps = plan.total_steps;
  schedule.min_lr_ratio = options.min_lr_ratio;

  const double flops_per_token = step_flops_per_token(models, options);
  const double peak_flops = device_peak_flops(device, options.peak_tflops);
  const bool tty = ::isatty(STDERR_FILENO);
  std::optional<io::TokenShard> val_shard;
  if (!options.val_data.empty()) val_shard = io::TokenShard::open(options.val_data.front());

  const fs::path carry_from = models.student_source.dir;
  const at::ScalarType save_dtype = dtype;
  auto save = [&]() -> fs::path {
    if (!lead) return {};
    metrics.flush();
    if (extra_metrics) extra_metrics->flush();  // a resumed run must find every checkpointed step in each sink
    CheckpointContents contents{&models.student->config(), &models.student->weights(), save_dtype, &optimizer,
                                counters, carry_from,
                                {{"trained_by", "prime-train"}, {"prime_version", PRIME_VERSION},
                                 {"plan", plan_json(options)}, {"step", counters.step}, {"tokens", counters.tokens}}};
    return write_checkpoint(options.out, contents, options.keep);
  };

  TrainResult result;
  result.run_dir = options.out;
  const int64_t tokens_before = counters.tokens;  // a resumed run's, from before this call
  double window_seconds = 0;
  int64_t window_tokens = 0;
  while (counters.step < plan.total_steps) {
    const auto step_start = std::chrono::steady_clock::now();
    const double lr = schedule.at(counters.step) * counters.lr_scale;
    optimizer.zero_grad();
    double loss_sum = 0;
    std::map<std::string, double> part_sums;
    for (int64_t pass = 0; pass < plan.accumulation; ++pass) {
      const Batch batch = data.next();
      StepLoss step_loss;
      {
        AutocastScope scope(autocast);
        step_loss = compute_step_loss(options, models, batch);
      }
      (step_loss.loss / static_cast<double>(plan.accumulation)).backward();
      loss_sum += step_loss.loss.item<double>();
      for (const auto& [key, value] : step_loss.parts) part_sums[key] += value;
    }
    std::vector<at::Tensor> grads;
    for (auto& parameter : models.trained) {
      at::Tensor& grad = parameter.tensor.mutable_grad();
      if (!grad.defined()) grad = at::zeros_like(parameter.tensor);
      grads.push_back(grad);
    }
    dist.average(grads);
    loss_sum = dist.average_scalar(loss_sum);
    double squared = 0;
    for (const auto& grad : grads) squared += grad.to(at::kDouble).pow(2).sum().item<double>();
    const double grad_norm = std::sqrt(squared);
    const double loss = loss_sum / plan.accumulation;
    counters.data_position = data.position();

    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      ++counters.bad_steps;
      ++counters.bad_in_row;
      if (lead) log << "step " << counters.step + 1 << ": non-finite " << (std::isfinite(loss) ? "gradient" : "loss")
                    << ", step skipped (" << counters.bad_in_row << " in a row)\n";
      if (counters.bad_in_row < options.max_bad_steps) continue;
      const auto checkpoints = list_checkpoints(options.out);
      if (checkpoints.empty() || counters.rollbacks >= options.max_rollbacks)
        throw user_error("training diverged: ", counters.bad_in_row, " non-finite steps in a row after ",
                         counters.rollbacks, " rollback(s); ",
                         checkpoints.empty() ? std::string("no checkpoint was written yet")
                                             : "the last good checkpoint is " + checkpoints.back().string(),
                         ". Lower --lr or check the data.");
      // Roll back: the last checkpoint's weights and moments, half the learning rate, and the
      // data moves on past the batches that diverged.
      LoadedTrainerState state = read_trainer_state(checkpoints.back());
      const io::Checkpoint weights = io::Checkpoint::open(checkpoints.back());
      {
        at::NoGradGuard no_grad;
        for (auto& parameter : models.trained) {
          auto master = state.master.find(parameter.name);
          parameter.tensor.copy_(master != state.master.end() ? master->second : weights.tensor(parameter.name));
        }
      }
      optimizer.load_state(state.optimizer);
      // Step and tokens go back with the weights; the data position, the bad-step count, the
      // rollbacks and the learning-rate scale carry on.
      const TrainerCounters now = counters;
      counters = state.counters;
      counters.data_position = now.data_position;
      counters.bad_steps = now.bad_steps;
      counters.rollbacks = now.rollbacks + 1;
      counters.lr_scale = now.lr_scale * 0.5;
      counters.bad_in_row = 0;
      ++result.rollbacks;
      if (lead) log << "rolled back to " << checkpoints.back().filename().string() << " with the learning rate halved (x"
                    << counters.lr_scale << ")\n";
      MetricRecord r{"rollback", counters.step, {{"lr_scale", counters.lr_scale}}, {}};
      record(r);
      continue;
    }
    counters.bad_in_row = 0;
    counters.tokens += options.batch_tokens;
    if (options.grad_clip > 0 && grad_norm > options.grad_clip) {
      at::NoGradGuard no_grad;
      for (auto& grad : grads) grad.mul_(options.grad_clip / grad_norm);
    }
    optimizer.step(lr);
    ++counters.step;
    synchronize_device(device);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    window_seconds += seconds;
    window_tokens += options.batch_tokens;
    const double tokens_per_second = options.batch_tokens / seconds;
    const double mfu = peak_flops > 0 ? flops_per_token * tokens_per_second / peak_flops : std::nan("");
    const double peak_bytes = peak_device_bytes(device);
    result.last_loss = loss;
    ++result.steps_run;

    MetricRecord step_record{"step", counters.step,
                             {{"tokens", static_cast<double>(counters.tokens)}, {"loss", loss}, {"lr", lr},
                              {"grad_norm", grad_norm}, {"tokens_per_s", tokens_per_second}, {"mfu", mfu},
                              {"peak_memory_gb", peak_bytes / 1e9},
                              {"time", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()}},
                             {}};
    for (const auto& [key, value] : part_sums) step_record.values[key] = dist.average_scalar(value) / plan.accumulation;
    record(step_record);

    if (lead && (counters.step % options.log_every == 0 || counters.step == plan.total_steps)) {
      const double rate = window_tokens / std::max(window_seconds, 1e-9);
      const double eta = (plan.total_steps - counters.step) * options.batch_tokens / std::max(rate, 1e-9);
      std::ostringstream line;
      line << "step " << counters.step << "/" << plan.total_steps << " | tokens " << human_count(counters.tokens)
           << " | loss " << std::setprecision(5) << loss << " | lr " << std::scientific << std::setprecision(2) << lr
           << std::defaultfloat << " | grad-norm " << std::setprecision(3) << grad_norm << " | "
           << human_count(rate) << " tok/s";
      if (std::isfinite(mfu)) line << " | MFU " << std::fixed << std::setprecision(1) << 100 * mfu << "%";
      if (std::isfinite(peak_bytes)) line << " | peak " << std::fixed << std::setprecision(1) << peak_bytes / 1e9 << " GB";
      line << " | ETA " << human_seconds(eta);
      if (tty) log << "\r\033[K" << line.str() << (counters.step == plan.total_steps ? "\n" : "") << std::flush;
      else log << line.str() << "\n";
      window_seconds = 0, window_tokens = 0;
    }

    if (val_shard && options.eval_every > 0 &&
        (counters.step % options.eval_every == 0 || counters.step == plan.total_steps) && lead) {
      eval::PerplexityOptions ppl;
      ppl.ctx = options.seq_len;
      ppl.stride = options.seq_len / 2;
      ppl.max_tokens = std::min<int64_t>(options.val_tokens, val_shard->size());
      AutocastScope scope(autocast);
      const eval::PerplexityResult val = eval::perplexity(eval::model_logits(*models.student), *val_shard, ppl, vocab);
      result.last_val_ppl = val.ppl;
      record({"eval", counters.step, {{"val_loss", val.nll_mean}, {"val_ppl", val.ppl}, {"tokens", static_cast<double>(counters.tokens)}}, {}});
      if (tty) log << "\n";
      log << "eval at step " << counters.step << ": val loss " << val.nll_mean << ", val ppl " << val.ppl << "\n";
    }
    if (options.save_every > 0 && counters.step % options.save_every == 0 && counters.step < plan.total_steps) save();
  }
  result.final_checkpoint = save().string();  // empty on ranks other than 0
  if (lead) metrics.flush();
  dist.barrier();
  result.steps = counters.step;
  result.tokens = counters.tokens;
  result.bad_steps = counters.bad_steps;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  result.tokens_run = counters.tokens - tokens_before;
  result.tokens_per_second = result.seconds > 0 ? result.tokens_run / result.seconds : 0;
  return result;
}

TrainResult run_training(const TrainOptions& options, const std::string& command_line, std::ostream& log,
                         MetricsSink* extra_metrics) {
  try {
    return run_training_unguarded(options, command_line, log, extra_metrics);
  } catch (const c10::OutOfMemoryError& error) {
    // A model or batch that does not fit is the run's size, not a bug: say what to change.
    throw user_error("out of device memory (", error.what_without_backtrace(),
                     "). Try --recompute, a smaller --micro-batch-tokens, or fewer trained groups");
  }
}

}  // namespace prime::train
