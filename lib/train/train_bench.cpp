#include "train/train_bench.h"

#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "kernels/common/policy.h"
#include "train/adamw.h"
#include "train/autocast.h"
#include "train/batches.h"
#include "train/models.h"
#include "train/step_loss.h"
#include "train/throughput.h"
#include "util/cli.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::train {
namespace {

TrainBenchResult bench(const TrainBenchOptions& options, std::ostream* log) {
  TrainOptions train = options.train;
  const at::Device device = parse_device(train.device);  // "auto": CUDA when there is one
  if (train.dtype == "auto") train.dtype = device.is_cuda() ? "bf16" : "fp32";
  if (options.batch < 1 || train.seq_len < 2) throw user_error("--batch must be >= 1 and --seq-len >= 2");
  if (options.repeats < 1) throw user_error("--repeats must be >= 1");
  if (options.profile && options.compare_kernels)
    throw user_error("--profile runs one step under PRIME_KERNELS: it does not combine with --compare-kernels");
  if (train.stage != Stage::Pt && train.teacher.empty())
    throw user_error("--stage ", stage_name(train.stage), " needs --teacher");
  const at::ScalarType dtype = parse_dtype_flag(train.dtype);
  if (device.is_cpu() && dtype != at::kFloat) throw user_error("--dtype ", train.dtype, " runs on CUDA; on the CPU use fp32");
  const bool autocast = device.is_cuda() && dtype != at::kFloat;

  ModelSetup setup;
  setup.student_spec = train.model;
  setup.teacher_spec = train.stage == Stage::Pt ? "" : train.teacher;
  setup.groups = parse_groups(train.train.empty() ? default_groups(train.stage) : train.train);
  setup.device = device;
  setup.dtype = dtype;
  const auto setup_start = std::chrono::steady_clock::now();
  RunModels models = build_run_models(setup);
  synchronize_device(device);
  const double setup_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - setup_start).count();
  AdamW optimizer(models.trained, {});
  const int64_t vocab = models.student->config().vocab_size;
  Batch batch;
  batch.input_ids = at::randint(0, vocab, {options.batch, train.seq_len}, at::kLong);
  batch.targets = at::randint(0, vocab, {options.batch, train.seq_len}, at::kLong);

  TrainBenchResult result;
  std::ostringstream device_name;
  device_name << device;
  result.device = device_name.str();
  result.dtype = train.dtype;
  result.tokens_per_step = options.batch * train.seq_len;
  result.student_parameters = models.student_parameters;
  result.trained_parameters = models.trained_parameters;
  result.replaced_layers = models.replaced_layers;
  result.setup_seconds = setup_seconds;
  if (log) *log << format_train_bench_setup(result, options) << std::flush;

  auto step = [&] {
    optimizer.zero_grad();
    StepLoss loss;
    {
      AutocastScope scope(autocast);
      loss = compute_step_loss(train, models, batch);
    }
    loss.loss.backward();
    optimizer.step(1e-6);
  };
  if (options.profile) {
    run_in_profiler_range(step, device);
    if (log)
      *log << "profiled one step (after one warm-up), between cudaProfilerStart and cudaProfilerStop, kernels policy "
           << (kernels::policy() == kernels::Policy::Auto ? "auto" : "torch") << "\n" << std::flush;
    return result;
  }
  const double peak = device_peak_flops(device, train.peak_tflops);
  const int64_t hidden = models.student->config().hidden_size;
  const auto input_type = autocast ? at::kBFloat16 : models.student->weights().begin()->second.scalar_type();
  // One timing under the policy in force (PRIME_KERNELS), or one under each policy, kernels first.
  std::vector<std::pair<std::string, kernels::Policy>> policies;
  if (options.compare_kernels)
    policies = {{"kernels", kernels::Policy::Auto}, {"torch-ops", kernels::Policy::Torch}};
  else
    policies = {{"", kernels::policy()}};
  for (const auto& [label, policy] : policies) {
    const kernels::ScopedKernelPolicy scoped(policy);
    TrainBenchTiming timing;
    timing.label = label;
    reset_peak_device_bytes(device);
    timing.step_ms = median_ms(step, device, options.warmup, options.repeats);
    timing.peak_bytes = peak_device_bytes(device);
    timing.tokens_per_second = result.tokens_per_step / (timing.step_ms / 1e3);
    if (peak > 0) timing.mfu = step_flops_per_token(models, train) * timing.tokens_per_second / peak;
    if (log) *log << format_train_bench_step(timing, options) << std::flush;

    // Each replaced layer's mixer alone, forward + backward, on an input that needs its gradient
    // (the layers below it train too), under the step's autocast.
    for (int64_t layer : models.replaced_layers) {
      model::Mixer& mixer = models.student->mixer(layer);
      const at::Tensor x =
          at::randn({options.batch, train.seq_len, hidden}, at::TensorOptions().device(device).dtype(input_type))
              .set_requires_grad(true);
      auto run = [&] {
        at::Tensor y;
        {
          AutocastScope scope(autocast);
          y = mixer.forward(x, nullptr);
        }
        y.backward(at::ones_like(y));
      };
      timing.ssm_ms += median_ms(run, device, options.warmup, options.repeats);
    }
    optimizer.zero_grad();
    timing.ssm_share = timing.step_ms > 0 ? timing.ssm_ms / timing.step_ms : 0;
    if (log) *log << format_train_bench_mixers(timing) << std::flush;
    result.timings.push_back(timing);
  }
  if (log && result.timings.size() == 2) *log << format_train_bench_ratio(result) << std::flush;
  return result;
}

}  // namespace

TrainBenchResult run_train_bench(const TrainBenchOptions& options, std::ostream* log) {
  try {
    return bench(options, log);
  } catch (const c10::OutOfMemoryError& error) {
    throw user_error("out of device memory at batch ", options.batch, " x ", options.train.seq_len, " tokens (",
                     error.what_without_backtrace(), "). Try --recompute or a smaller --batch/--seq-len");
  }
}

std::string format_train_bench_setup(const TrainBenchResult& r, const TrainBenchOptions& options) {
  std::ostringstream out;
  out << std::fixed;
  out << "model " << options.train.model << " (" << std::setprecision(1) << r.student_parameters / 1e6
      << "M parameters, " << r.trained_parameters / 1e6 << "M trained, " << r.replaced_layers.size()
      << " replaced layers)\n";
  out << "step: " << stage_name(options.train.stage) << ", " << options.batch << " x " << options.train.seq_len
      << " tokens, " << r.dtype << (options.train.recompute ? ", --recompute" : "") << ", on " << r.device
      << "\n";
  out << std::setprecision(1) << (options.train.stage == Stage::Pt ? "student" : "teacher and student")
      << " built in " << r.setup_seconds << " s\n";
  return out.str();
}

namespace {

std::string labelled(const std::string& label, const std::string& text) {
  return label.empty() ? text : label + ": " + text;
}

}  // namespace

std::string format_train_bench_step(const TrainBenchTiming& t, const TrainBenchOptions& options) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1) << "step time " << t.step_ms << " ms (median of " << options.repeats
      << "), " << std::setprecision(0) << t.tokens_per_second << " tokens/s";
  if (t.mfu > 0) out << ", MFU " << std::setprecision(1) << 100 * t.mfu << "%";
  if (std::isfinite(t.peak_bytes)) out << ", peak memory " << std::setprecision(1) << t.peak_bytes / 1e9 << " GB";
  out << "\n";
  return labelled(t.label, out.str());
}

std::string format_train_bench_mixers(const TrainBenchTiming& t) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1) << "replaced layers' mixers (forward + backward): " << t.ssm_ms
      << " ms = " << 100 * t.ssm_share << "% of the step\n";
  return labelled(t.label, out.str());
}

std::string format_train_bench_ratio(const TrainBenchResult& r) {
  const TrainBenchTiming &first = r.timings.at(0), &second = r.timings.at(1);
  std::ostringstream out;
  out << std::fixed << std::setprecision(2) << second.label << " time / " << first.label
      << " time, same models in one run: step " << second.step_ms / first.step_ms << "x, replaced layers' mixers "
      << second.ssm_ms / first.ssm_ms << "x";
  if (r.device.rfind("cuda", 0) != 0)
    out << " (the kernels run on CUDA only: here both are the torch-ops forms)";
  else if (!kernels::built_with_cuda_kernels())
    out << " (this build has no CUDA kernels: both are the torch-ops forms)";
  out << "\n";
  return out.str();
}

}  // namespace prime::train
