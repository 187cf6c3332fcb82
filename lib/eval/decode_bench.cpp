#include "eval/decode_bench.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <map>
#include <memory>
#include <tuple>
#include <sstream>

#include "convert/model_spec.h"
#include "io/architecture.h"
#include "io/source.h"
#include "model/attention.h"
#include "model/step_decoder.h"
#include "eval/decode_fit.h"
#include "eval/synthetic_context.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::eval {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string mib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f", bytes / (1024.0 * 1024.0));
  return text;
}

}  // namespace

BenchModel make_bench_model(std::string name, const io::ModelConfig& config, const model::TensorMap& weights) {
  BenchModel bench;
  bench.spec = std::move(name);
  const auto& arch = io::find_architecture(config.model_type, config.architecture, bench.spec);
  int64_t embed_bytes = 0;
  for (const auto& [tensor_name, tensor] : weights) {
    const auto bytes = static_cast<int64_t>(tensor.numel() * tensor.element_size());
    // Expert tensors are named P.experts.<e>.S (model/weights.h).
    const bool expert = config.moe.num_experts > 0 && tensor_name.find(".experts.") != std::string::npos;
    (expert ? bench.expert_bytes : bench.weight_bytes_per_step) += bytes;
    bench.parameters += tensor.numel();
    if (tensor_name == arch.name("embed_tokens")) embed_bytes = bytes;
  }
  if (!config.tie_word_embeddings) bench.weight_bytes_per_step -= embed_bytes;
  if (config.moe.num_experts > 0)
    bench.expert_pick_fraction =
        std::min(1.0, double(config.moe.num_experts_per_tok) / double(config.moe.num_experts));
  bench.model = std::make_unique<model::HybridModel>(config, weights);
  return bench;
}

double BenchModel::weight_bytes_read(int64_t batch) const {
  const double picked = 1.0 - std::pow(1.0 - expert_pick_fraction, double(std::max<int64_t>(batch, 0)));
  return double(weight_bytes_per_step) + double(expert_bytes) * picked;
}

BenchModel load_bench_model(const std::string& spec, const model::LoadOptions& options) {
  // The weights rather than the model, so they can be counted.
  const convert::SpecWeights loaded = convert::load_spec_weights(spec, options);
  return make_bench_model(spec, loaded.config, loaded.weights);
}

const std::vector<std::string>& decode_modes() {
  static const std::vector<std::string> modes = {"eager", "static", "graph"};
  return modes;
}

namespace {

void check_modes(const std::vector<std::string>& modes) {
  if (modes.empty()) throw user_error("decode bench needs at least one mode");
  for (const auto& mode : modes)
    if (std::find(decode_modes().begin(), decode_modes().end(), mode) == decode_modes().end())
      throw user_error("unknown decode mode '", mode, "' (eager, static, graph)");
}

// Untimed steps before the timed ones: a graph's first two are an eager step and the capture; with
// profile_step the last two run through run_in_profiler_range, so the profiled one is a replay.
int64_t warmup_steps(const DecodeBenchOptions& options, bool graph) {
  const int64_t least = options.profile_step ? (graph ? 3 : 2) : (graph ? 2 : 0);
  return std::max<int64_t>(options.warmup, least);
}

}  // namespace

int64_t decode_steps(const DecodeBenchOptions& options, bool graph) {
  return warmup_steps(options, graph) + options.new_tokens;
}

DecodeBenchRow run_decode_point(BenchModel& bench, int64_t batch, int64_t prompt, const std::string& mode,
                                const DecodeBenchOptions& options) {
  if (batch < 1 || prompt < 1 || options.new_tokens < 1)
    throw user_error("decode bench needs batch, prompt and new tokens >= 1");
  if (options.prefill_repeats < 1) throw user_error("--prefill-repeats must be >= 1");
  check_modes({mode});
  if (options.context != "prefill" && options.context != "synthetic")
    throw user_error("unknown decode context '", options.context, "' (prefill, synthetic)");
  model::HybridModel& model = *bench.model;
  DecodeBenchRow row;
  row.model = bench.spec;
  row.mode = mode;
  row.context = options.context;
  row.batch = batch;
  row.prompt = prompt;
  row.new_tokens = options.new_tokens;
  at::NoGradGuard no_grad;
  try {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed + 1000003 * batch + prompt);
    const at::Tensor prompt_ids =
        at::randint(model.config().vocab_size, {batch, prompt}, generator, at::TensorOptions().dtype(at::kLong))
            .to(model.device());
    const bool graph = mode == "graph" && model::StepDecoder::graph_possible(model);
    const int64_t warmup = warmup_steps(options, graph);
    const int64_t total = prompt + decode_steps(options, graph);
    model::ModelCache cache = model.make_cache(batch, total);  // allocated once in every mode
    at::Tensor next;  // [B]
    if (options.context == "synthetic") {
      fill_synthetic_context(model, cache, prompt);
      next = prompt_ids.select(1, prompt - 1);
    } else {
      // Prefill in chunks so the [B, T, vocab] logits stay bounded; only the last position matters.
      // Repeated, each run into a fresh cache (the old one freed first), the median time counts.
      const int64_t chunk = std::max<int64_t>(1, options.prefill_tokens / batch);
      std::vector<double> seconds;
      for (int64_t run = 0; run < options.prefill_repeats; ++run) {
        if (run > 0) {
          cache = model::ModelCache();
          cache = model.make_cache(batch, total);
        }
        const auto start = Clock::now();
        at::Tensor last;
        for (int64_t begin = 0; begin < prompt; begin += chunk) {
          const int64_t length = std::min(chunk, prompt - begin);
          last = model.forward(prompt_ids.narrow(1, begin, length), &cache).select(1, length - 1);
        }
        next = last.argmax(-1);
        next.cpu();  // waits for the device
        seconds.push_back(since(start));
      }
      std::sort(seconds.begin(), seconds.end());
      row.prefill_seconds = seconds[seconds.size() / 2];  // median_ms's rule (util/device_timing.h)
    }
    const CacheBytes after_prefill = cache_bytes(cache);

    std::unique_ptr<model::StepDecoder> decoder;
    if (mode != "eager") {
      decoder = std::make_unique<model::StepDecoder>(model, cache, total, mode == "graph");
      row.mode = decoder->uses_graph() ? "graph" : "static";
    }
    auto decode_step = [&](const at::Tensor& ids) {
      return decoder ? decoder->step(ids).argmax(-1) : model.forward(ids.unsqueeze(1), &cache).select(1, 0).argmax(-1);
    };
    const int64_t profiled = options.profile_step ? 2 : 0;
    for (int64_t step = 0; step < warmup - profiled; ++step) next = decode_step(next);
    if (profiled > 0) run_in_profiler_range([&] { next = decode_step(next); }, model.device());
    next.cpu();
    const auto start = Clock::now();
    for (int64_t step = 0; step < options.new_tokens; ++step) next = decode_step(next);
    next.cpu();
    row.decode_seconds = since(start);

    const CacheBytes at_end = cache_bytes(cache);
    row.kv_bytes_per_sequence = at_end.kv;
    row.state_bytes_per_sequence = at_end.state;
    // Per sequence and step: read the KV cache (its mean size over the steps) and read + write
    // the SSM state; the weights are read once per step for the whole batch.
    const double kv_read = 0.5 * double(after_prefill.kv + at_end.kv);
    row.step_bytes = bench.weight_bytes_read(batch) + double(batch) * (kv_read + 2.0 * double(at_end.state));
    row.floor_step_seconds = row.step_bytes / (options.hbm_gbps * 1e9);
  } catch (const c10::OutOfMemoryError&) {
    row.error = "out of memory";
    return row;
  }
  // A synthetic context has no prefill rate to report.
  if (options.context == "prefill") row.prefill_tokens_per_s = double(batch * prompt) / row.prefill_seconds;
  row.decode_tokens_per_s = double(batch * options.new_tokens) / row.decode_seconds;
  return row;
}

namespace {

// A --fit-batch point: what the estimate misses (allocator fragmentation, a library's workspace)
// shows up as an out-of-memory, and the point is retried at 7/8 of the batch.
DecodeBenchRow run_fitted_point(BenchModel& bench, int64_t batch, int64_t prompt, const std::string& mode,
                                const DecodeBenchOptions& options) {
  for (int attempt = 0;; ++attempt) {
    DecodeBenchRow row = run_decode_point(bench, batch, prompt, mode, options);
    row.fitted = true;
    if (row.error != "out of memory" || batch == 1 || attempt == 8) return row;
    release_cached_memory(bench.model->device());
    batch = std::max<int64_t>(1, batch * 7 / 8);
  }
}

}  // namespace

std::vector<DecodeBenchRow> run_decode_bench(BenchModel& bench, const DecodeBenchOptions& options) {
  check_modes(options.modes);
  // One short untimed point per mode first: the first forward pays for kernel selection,
  // allocator growth and thread-pool start-up, which would otherwise land in the first row.
  DecodeBenchOptions warm = options;
  warm.new_tokens = 2;
  warm.profile_step = false;
  for (const auto& mode : options.modes)
    run_decode_point(bench, options.batches.empty() || options.fit_batch ? 1 : options.batches.front(), 16, mode, warm);
  std::vector<DecodeBenchRow> rows;
  for (int64_t prompt : options.prompts) {
    if (options.fit_batch) {
      const BatchFit fit = fit_decode_batch(bench, prompt, options);
      for (const auto& mode : options.modes) rows.push_back(run_fitted_point(bench, fit.batch, prompt, mode, options));
      continue;
    }
    for (int64_t batch : options.batches) {
      for (const auto& mode : options.modes) {
        if (options.max_batch_tokens > 0 && batch * prompt > options.max_batch_tokens) {
          DecodeBenchRow row;
          row.model = bench.spec, row.mode = mode, row.batch = batch, row.prompt = prompt;
          row.new_tokens = options.new_tokens, row.context = options.context;
          row.error = "skipped (B x P > " + std::to_string(options.max_batch_tokens) + ")";
          rows.push_back(row);
          continue;
        }
        rows.push_back(run_decode_point(bench, batch, prompt, mode, options));
      }
    }
  }
  return rows;
}

namespace {

bool usable(const DecodeBenchRow* row) { return row && row->error.empty() && row->decode_tokens_per_s > 0; }

}  // namespace

std::string format_decode_row(const DecodeBenchRow& row, const DecodeBenchRow* anchor, const DecodeBenchRow* first_mode,
                              int name_width) {
  std::ostringstream out;
  const std::string name = static_cast<int>(row.model.size()) > name_width
                               ? "..." + row.model.substr(row.model.size() - (name_width - 3))
                               : row.model;
  out << std::left << std::setw(name_width + 1) << name << std::setw(7) << row.mode << std::right << std::setw(5)
      << row.batch << std::setw(8) << row.prompt;
  if (!row.error.empty()) {
    out << "  " << row.error;
    return out.str();
  }
  char cells[256];
  char prefill[32];
  if (row.context == "synthetic") std::snprintf(prefill, sizeof(prefill), "%13s", "synthetic");
  else std::snprintf(prefill, sizeof(prefill), "%13.0f", row.prefill_tokens_per_s);
  std::snprintf(cells, sizeof(cells), "%s%12.1f%10.2f%10s%11s%10.3f%8.1f%%", prefill, row.decode_tokens_per_s, 1e3 * row.step_seconds(), mib(row.kv_bytes_per_sequence).c_str(),
                mib(row.state_bytes_per_sequence).c_str(), 1e3 * row.floor_step_seconds, 100 * row.floor_fraction());
  out << cells;
  const bool vs_model = usable(anchor) && anchor != &row && anchor->model != row.model;
  const bool vs_mode = usable(first_mode) && first_mode != &row && first_mode->mode != row.mode;
  if (vs_model) {
    const double base_cache = double(anchor->kv_bytes_per_sequence + anchor->state_bytes_per_sequence);
    const double cache = double(row.kv_bytes_per_sequence + row.state_bytes_per_sequence);
    std::snprintf(cells, sizeof(cells), "%8.2fx%8.2fx", row.decode_tokens_per_s / anchor->decode_tokens_per_s,
                  base_cache > 0 ? cache / base_cache : 0.0);
    out << cells;
  } else if (vs_mode) {
    out << std::string(18, ' ');
  }
  if (vs_mode) {
    std::snprintf(cells, sizeof(cells), "%9.2fx", row.decode_tokens_per_s / first_mode->decode_tokens_per_s);
    out << cells;
  }
  return out.str();
}

std::string decode_table_header(const DecodeBenchOptions& options, int name_width) {
  std::ostringstream out;
  const std::string first_mode = options.modes.empty() ? "" : options.modes.front();
  out << "decode: "
      << (options.context == "synthetic"   ? "a synthetic context of P tokens (no prefill)"
          : options.prefill_repeats > 1 ? "prefill P (the median of " + std::to_string(options.prefill_repeats) + " runs)"
                                        : std::string("prefill P"))
      << ", then " << options.new_tokens << " steps (" << warmup_steps(options, false) << " warm-up steps untimed, "
      << warmup_steps(options, true) << " with a graph" << (options.profile_step ? ", the last one profiled" : "")
      << "); floor = (weights + B x cache traffic) / " << options.hbm_gbps
      << " GB/s; x dec, x cache: vs the first model in the same mode; x " << first_mode << ": vs the same model "
      << first_mode;
  if (options.fit_batch) {
    out << "; B: the largest batch whose caches fit ";
    if (options.memory_gib > 0) out << options.memory_gib << " GiB";
    else out << "the device's memory";
    out << " next to the weights (8% kept in reserve), ratios at the same P";
  }
  out << "\n";
  out << std::left << std::setw(name_width + 1) << "model" << std::setw(7) << "mode" << std::right << std::setw(5)
      << "B" << std::setw(8) << "P" << std::setw(13) << "prefill t/s" << std::setw(12) << "decode t/s" << std::setw(10)
      << "ms/step" << std::setw(10) << "KV MiB" << std::setw(11) << "state MiB" << std::setw(10) << "floor ms"
      << std::setw(9) << "% floor" << std::setw(9) << "x dec" << std::setw(9) << "x cache" << std::setw(10)
      << ("x " + first_mode);
  return out.str();
}

namespace {

// The rows a row's ratios refer to: the first model's at the same (B, P, mode) and the same
// model's at the same (B, P) in the first mode. Fitted rows compare at the same P whatever their
// batch (each model's largest): there B is keyed as 0.
struct Anchors {
  std::map<std::tuple<std::string, int64_t, int64_t>, const DecodeBenchRow*> first_model;
  std::map<std::tuple<std::string, int64_t, int64_t>, const DecodeBenchRow*> first_mode;

  static int64_t key_batch(const DecodeBenchRow& row) { return row.fitted ? 0 : row.batch; }
  explicit Anchors(const std::vector<DecodeBenchRow>& rows) {
    const std::string model = rows.empty() ? "" : rows.front().model;
    for (const auto& row : rows) {
      if (row.model == model) first_model.emplace(std::make_tuple(row.mode, key_batch(row), row.prompt), &row);
      first_mode.emplace(std::make_tuple(row.model, key_batch(row), row.prompt), &row);  // the first one stays
    }
  }
  std::string format(const DecodeBenchRow& row, int name_width) const {
    auto a = first_model.find({row.mode, key_batch(row), row.prompt});
    auto m = first_mode.find({row.model, key_batch(row), row.prompt});
    return format_decode_row(row, a == first_model.end() ? nullptr : a->second,
                             m == first_mode.end() ? nullptr : m->second, name_width);
  }
};

}  // namespace

void print_decode_table(const std::vector<DecodeBenchRow>& rows, const DecodeBenchOptions& options, std::ostream& out) {
  int name_width = 5;
  for (const auto& row : rows) name_width = std::max(name_width, std::min<int>(static_cast<int>(row.model.size()), 60));
  out << decode_table_header(options, name_width) << "\n";
  const Anchors anchors(rows);
  for (const auto& row : rows) out << anchors.format(row, name_width) << "\n";
}

std::vector<DecodeBenchRow> run_decode_models(const std::vector<std::string>& specs, const model::LoadOptions& load,
                                              const DecodeBenchOptions& options, std::ostream* log) {
  check_modes(options.modes);
  std::vector<DecodeBenchRow> rows;
  rows.reserve(specs.size() * options.batches.size() * options.prompts.size() * options.modes.size());
  int name_width = 5;
  for (const auto& spec : specs) name_width = std::max(name_width, std::min<int>(static_cast<int>(spec.size()), 60));
  if (log) *log << decode_table_header(options, name_width) << std::endl;
  for (const auto& spec : specs) {
    // One model in memory at a time, each starting from an empty allocator cache: the blocks a model before it
    // left cached (split by its weights and caches) would otherwise fragment this one's largest allocations, and
    // a fitted batch would come out of memory and be retried smaller (--fit-batch gave a different B after
    // another model in the same run than alone).
    release_cached_memory(load.device);
    BenchModel bench = load_bench_model(spec, load);
    if (log) {
      *log << "# " << spec << ": " << bench.parameters << " parameters, " << bench.weight_bytes_per_step / 1e9
           << " GB of weights read per step";
      if (bench.expert_bytes)
        *log << " besides the experts' " << bench.expert_bytes / 1e9 << " GB, of which a step reads those its tokens"
             << " pick (uniform routing: " << (bench.weight_bytes_read(1) - bench.weight_bytes_per_step) / 1e9
             << " GB at B = 1)";
      *log << std::endl;
    }
    for (auto& row : run_decode_bench(bench, options)) {
      rows.push_back(std::move(row));
      if (log) *log << Anchors(rows).format(rows.back(), name_width) << std::endl;
    }
  }
  return rows;
}

nlohmann::json to_json(const std::vector<DecodeBenchRow>& rows, const DecodeBenchOptions& options) {
  nlohmann::json out = {{"new_tokens", options.new_tokens}, {"warmup", options.warmup}, {"hbm_gbps", options.hbm_gbps},
                        {"modes", options.modes}, {"prefill_repeats", options.prefill_repeats}};
  nlohmann::json items = nlohmann::json::array();
  for (const auto& row : rows) {
    nlohmann::json item = {{"model", row.model}, {"mode", row.mode},     {"context", row.context},
                           {"batch", row.batch}, {"prompt", row.prompt}};
    if (row.fitted) item["fitted_batch"] = true;
    if (!row.error.empty()) {
      item["error"] = row.error;
    } else {
      item.update({{"prefill_tokens_per_s", row.prefill_tokens_per_s},
                   {"decode_tokens_per_s", row.decode_tokens_per_s},
                   {"step_ms", 1e3 * row.step_seconds()},
                   {"kv_bytes_per_sequence", row.kv_bytes_per_sequence},
                   {"state_bytes_per_sequence", row.state_bytes_per_sequence},
                   {"step_bytes", row.step_bytes},
                   {"floor_step_ms", 1e3 * row.floor_step_seconds},
                   {"floor_fraction", row.floor_fraction()}});
    }
    items.push_back(item);
  }
  out["rows"] = items;
  return out;
}

}  // namespace prime::eval
