// Decode throughput of a model (Transformer or hybrid, any source): prefill P tokens for B
// sequences, then decode N tokens one step at a time with the per-layer cache, and compare the
// step time with the memory-traffic floor: every decode step must at least read the weights once
// and each sequence's cache (KV read; SSM state read and written), at --hbm-gbps.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/hybrid_model.h"

namespace prime::eval {

// How the decode steps run: "eager" (the growing KV cache, every op dispatched from the host),
// "static" (static cache, ops dispatched from the host) or "graph" (static cache, each step one
// CUDA-graph replay; where a graph is impossible, e.g. on CPU, it runs as "static" and the row
// says so).
const std::vector<std::string>& decode_modes();

struct DecodeBenchOptions {
  std::vector<std::string> modes = {"eager", "graph"};  // each (model, B, P) is run in every mode
  std::vector<int64_t> batches = {1};
  std::vector<int64_t> prompts = {512};
  int64_t new_tokens = 32;
  int64_t warmup = 2;             // decode steps before the timed ones (not counted; >= 2 with a graph:
                                  // one eager step, then the capture)
  int64_t prefill_tokens = 8192;  // at most B x T tokens per prefill forward (bounds the logits)
  int64_t prefill_repeats = 1;    // timed prefills per point, each into a fresh cache; the median is reported
  double hbm_gbps = 4800;         // the floor's bandwidth (prime-bench: util/device_info.h's floor_bandwidth_gbps)
  int64_t max_batch_tokens = 0;  // > 0: skip points with B x P above this (time/memory guard)
  // Instead of `batches`: per prompt length, the largest batch whose caches fit memory_gib GiB
  // (0: the CUDA device's memory) next to the weights (eval/decode_fit.h).
  bool fit_batch = false;
  double memory_gib = 0;
  // "prefill": run the model over B x P random prompt tokens; "synthetic": fill the cache with
  // random keys, values and states at length P instead (eval/synthetic_context.h): the same
  // decode step, without the prefill's cost.
  std::string context = "prefill";
  uint64_t seed = 0;
  // The last warm-up step runs inside a profiler range (util/device_timing.h's run_in_profiler_range;
  // at least two warm-up steps then, three with a graph, so the profiled step is a replay): `ncu
  // --profile-from-start off --graph-profiling node` sees the kernels of exactly one step per point.
  bool profile_step = false;
};

// A model ready to bench plus what a decode step reads of its weights: every tensor once, except
// the embedding table (B rows) when it is not tied to the LM head, and a mixture of experts'
// experts, of which a step reads those its B tokens pick.
struct BenchModel {
  std::string spec;
  std::unique_ptr<model::HybridModel> model;
  int64_t weight_bytes_per_step = 0;  // everything but the experts
  int64_t expert_bytes = 0;           // all experts of all layers (0: dense)
  double expert_pick_fraction = 0;    // experts per token / experts (k / E)
  int64_t parameters = 0;

  // Weight bytes a decode step of `batch` tokens reads: the dense part, plus the experts the
  // tokens are expected to pick in each layer under uniform routing, E (1 - (1 - k/E)^B) of E
  // (top-k picks without replacement, taken as independent per token: ~2% high for small B).
  double weight_bytes_read(int64_t batch) const;
};
// spec: anything convert::load_model_spec takes (SOURCE+convert:LAYER:A:S hybrids included).
BenchModel load_bench_model(const std::string& spec, const model::LoadOptions& options);
// From a config and weights already prepared (device/dtype), e.g. a hybrid built in a test.
BenchModel make_bench_model(std::string name, const io::ModelConfig& config, const model::TensorMap& weights);

struct DecodeBenchRow {
  std::string model;
  std::string mode;  // what ran: eager, static or graph
  std::string context = "prefill";  // how the context was made: prefill or synthetic
  int64_t batch = 0, prompt = 0, new_tokens = 0;
  std::string error;  // non-empty: the run failed (e.g. "out of memory")
  bool fitted = false;  // batch chosen by --fit-batch (the largest that ran)
  double prefill_seconds = 0, decode_seconds = 0;
  double prefill_tokens_per_s = 0, decode_tokens_per_s = 0;
  int64_t kv_bytes_per_sequence = 0, state_bytes_per_sequence = 0;  // at context P + N
  double step_bytes = 0;         // floor traffic of an average decode step
  double floor_step_seconds = 0;  // step_bytes / HBM bandwidth
  double step_seconds() const { return new_tokens > 0 ? decode_seconds / new_tokens : 0; }
  double floor_fraction() const { return step_seconds() > 0 ? floor_step_seconds / step_seconds() : 0; }
};

// The decode steps a point runs after its context: the warm-up (at least two where it runs a CUDA
// graph: one eager step, then the capture; more with profile_step) and the timed steps.
int64_t decode_steps(const DecodeBenchOptions& options, bool graph);

// One (B, P, mode) point; a CUDA out-of-memory becomes row.error instead of an exception.
DecodeBenchRow run_decode_point(BenchModel& bench, int64_t batch, int64_t prompt, const std::string& mode,
                                const DecodeBenchOptions& options);

// Every (P, B, mode) of options for one model, in that nesting order.
std::vector<DecodeBenchRow> run_decode_bench(BenchModel& bench, const DecodeBenchOptions& options);

// Loads each spec in turn (one model in memory at a time) and runs every (B, P); with a log,
// each row is printed as a table line (ratios included) as soon as it is measured, so a run cut
// short still leaves its figures.
std::vector<DecodeBenchRow> run_decode_models(const std::vector<std::string>& specs, const model::LoadOptions& load,
                                              const DecodeBenchOptions& options, std::ostream* log = nullptr);

// A table line; `anchor` (the first model's row at the same (B, P, mode), or null) and
// `first_mode` (this model's row at the same (B, P) in the first mode, or null) give the ratios.
std::string format_decode_row(const DecodeBenchRow& row, const DecodeBenchRow* anchor,
                              const DecodeBenchRow* first_mode, int name_width);

// One table; for models after the first, decode tok/s and cache bytes also as ratios to the first
// model's row with the same (B, P, mode); for modes after the first, decode tok/s also as a ratio
// to the same model's row in the first mode.
void print_decode_table(const std::vector<DecodeBenchRow>& rows, const DecodeBenchOptions& options, std::ostream& out);
nlohmann::json to_json(const std::vector<DecodeBenchRow>& rows, const DecodeBenchOptions& options);

}  // namespace prime::eval
