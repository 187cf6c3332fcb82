#include "convert/conversion_plan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "convert/hybrid_config.h"
#include "io/architecture.h"
#include "util/cli.h"
#include "util/error.h"

namespace prime::convert {
namespace {

// Resident memory of the process before any tensor is touched: libtorch with its CUDA libraries
// mapped (prime-convert --help peaks at ~500 MB here); the estimate adds the largest step on top.
constexpr uint64_t kBaselineBytes = 500ull << 20;
constexpr uint64_t kWriterBufferBytes = 8ull << 20;

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

uint64_t element_count(const std::vector<int64_t>& shape) {
  uint64_t count = 1;
  for (int64_t extent : shape) count *= static_cast<uint64_t>(extent);
  return count;
}

std::string torch_dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    default: throw user_error("--dtype must be a floating type (bf16, fp16, fp32)");
  }
}

// Every tensor a Transformer of the source's config holds must be there, shaped as the config
// says and floating point; a missing attention tensor gets its own message.
void validate_source(const SourceWeights& weights, const io::ModelConfig& config) {
  const auto& arch = io::find_architecture(config.model_type, config.architecture, config.model_type);
  const std::string where = weights.source().spec;
  for (const auto& spec : io::transformer_tensor_specs(config)) {
    if (!weights.contains(spec.name)) {
      for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer)
        if (starts_with(spec.name, arch.name("attention_prefix", layer)))
          throw user_error("source ", where, " has no attention weights for layer ", layer, " (missing ", spec.name,
                           "); prime-convert needs a Transformer checkpoint of this config");
      throw user_error("source ", where, " is missing tensor ", spec.name);
    }
    if (weights.shape(spec.name) != spec.shape)
      throw user_error("source ", where, ": tensor ", spec.name, " has shape ", shape_text(weights.shape(spec.name)),
                       " but config.json implies ", shape_text(spec.shape));
    if (!at::isFloatingType(weights.dtype(spec.name)))
      throw user_error("source ", where, ": tensor ", spec.name, " is ", c10::toString(weights.dtype(spec.name)),
                       ", expected a floating-point dtype");
  }
}

// The layer a tensor name belongs to ("model.layers.12.mlp..." -> 12), -1 for none.
int64_t layer_of(const io::ArchitectureTemplate& arch, const std::string& name) {
  const std::string pattern = arch.tensors.at("layer_prefix");
  const auto hole = pattern.find("{i}");
  const std::string before = pattern.substr(0, hole), after = pattern.substr(hole + 3);
  if (!starts_with(name, before)) return -1;
  size_t end = before.size();
  while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
  if (end == before.size() || name.compare(end, after.size(), after) != 0) return -1;
  return std::stoll(name.substr(before.size(), end - before.size()));
}

TargetTensor pass_through(const SourceWeights& weights, const io::TensorSpec& spec,
                          const std::optional<at::ScalarType>& forced) {
  LayerInit init;
  init.forced_dtype = forced;
  init.source_dtype = [&weights](const std::string& name) { return weights.dtype(name); };
  return copy_target(init, spec.name, spec.name, spec.shape);
}

// Memory one target needs while it is produced and written, beyond the baseline.
uint64_t step_bytes(const SourceWeights& weights, const TargetTensor& target) {
  const bool synthetic = weights.source().kind == "synthetic";
  auto source_bytes = [&](const std::string& name) {
    // A synthetic tensor is generated in fp32, then cast; a checkpoint's is mapped.
    return synthetic ? element_count(weights.shape(name)) * 4 + weights.nbytes(name) : weights.nbytes(name);
  };
  if (target.copy && !synthetic) {
    const uint64_t chunk = SourceWeights::kChunkBytes;
    const uint64_t from = at::elementSize(weights.dtype(target.sources[0]));
    return chunk + (at::elementSize(target.dtype) != from ? chunk / from * at::elementSize(target.dtype) : 0);
  }
  if (target.copy) return source_bytes(target.sources[0]) + (target.dtype != weights.dtype(target.sources[0]) ? target.nbytes() : 0);
  uint64_t bytes = target.nbytes();
  for (const auto& name : target.sources) bytes += source_bytes(name);
  bytes += element_count(target.shape) * 4;  // at most one fp32 copy (random init; gates work in blocks)
  return bytes;
}

}  // namespace

std::string format_bytes(uint64_t bytes) {
  char text[32];
  if (bytes >= 1000000000ull)
    std::snprintf(text, sizeof text, "%.2f GB", bytes / 1e9);
  else if (bytes >= 1000000ull)
    std::snprintf(text, sizeof text, "%.1f MB", bytes / 1e6);
  else if (bytes >= 1000ull)
    std::snprintf(text, sizeof text, "%.1f kB", bytes / 1e3);
  else
    std::snprintf(text, sizeof text, "%llu B", static_cast<unsigned long long>(bytes));
  return text;
}

std::string dtype_short_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "fp16";
    case at::kFloat: return "fp32";
    case at::kDouble: return "fp64";
    default: return c10::toString(dtype);
  }
}

ConversionPlan plan_conversion(const ConvertOptions& options) {
  ConversionPlan plan;
  plan.init = parse_init_recipe(options.init);
  plan.seed = options.seed;
  plan.swa_window = options.swa_window;
  plan.max_shard_bytes = options.max_shard_bytes;
  if (plan.max_shard_bytes == 0) throw user_error("the shard size must be > 0");
  HybridOptions hybrid_options;
  hybrid_options.swa_window = options.swa_window;
  if (!options.dtype.empty()) {
    plan.dtype = parse_dtype_flag(options.dtype);
    hybrid_options.torch_dtype = torch_dtype_name(*plan.dtype);
  }

  plan.source = io::resolve_source(options.source);
  const io::ModelConfig& source = plan.source.config;
  if (source.is_hybrid())
    throw user_error("source ", options.source, " is already a hybrid (", io::join_layer_pattern(source.layer_pattern),
                     "); prime-convert starts from a Transformer checkpoint");
  plan.layers = plan_layers(source.num_hidden_layers, options.layers);
  plan.config = hybrid_config_json(source, plan.layers.types, hybrid_options);
  plan.hybrid = io::ModelConfig::from_json(plan.config, "the output config.json");

  plan.weights = std::make_shared<SourceWeights>(plan.source);
  const SourceWeights& weights = *plan.weights;
  validate_source(weights, source);

  // Converted layers first, keyed by output name; then everything in the hybrid's order.
  const auto& arch = io::find_architecture(source.model_type, source.architecture, source.model_type);
  const auto specs = hybrid_tensor_specs(plan.hybrid);
  std::map<std::string, TargetTensor> converted;
  for (int64_t layer = 0; layer < source.num_hidden_layers; ++layer) {
    const std::string& symbol = plan.layers.types[layer];
    if (symbol == "*") continue;
    LayerInit init;
    init.layer = layer;
    init.symbol = symbol;
    init.source = &source;
    init.recipe = plan.init;
    init.seed = plan.seed;
    init.attention = attention_source(source, layer);
    init.forced_dtype = plan.dtype;
    init.dtype = plan.dtype ? *plan.dtype : weights.dtype(init.attention.q);
    init.source_dtype = [&weights](const std::string& name) { return weights.dtype(name); };
    init.prefix = arch.name("layer_prefix", layer) + mixer_infix(symbol);
    for (const auto& spec : specs)
      if (starts_with(spec.name, init.prefix)) init.specs.push_back(spec);
    for (auto& target : layer_targets(init)) converted.emplace(target.name, std::move(target));
  }
  std::set<std::string> read;
  uint64_t largest_step = 0;
  for (const auto& spec : specs) {
    auto found = converted.find(spec.name);
    plan.targets.push_back(found != converted.end() ? std::move(found->second) : pass_through(weights, spec, plan.dtype));
    plan.target_layers.push_back(layer_of(arch, spec.name));
    const TargetTensor& target = plan.targets.back();
    if (target.copy && weights.shape(target.sources[0]) != target.shape)
      throw user_error("source tensor ", target.sources[0], " has shape ", shape_text(weights.shape(target.sources[0])),
                       " but ", target.name, " needs ", shape_text(target.shape));
    for (const auto& name : target.sources) read.insert(name);
    plan.output_bytes += target.nbytes();
    const uint64_t step = step_bytes(weights, target);
    if (step > largest_step) {
      largest_step = step;
      plan.peak_step = target.name;
    }
  }
  for (const auto& name : read) plan.read_bytes += weights.nbytes(name);
  for (const auto& name : weights.names())
    if (!read.count(name)) plan.dropped.push_back(name);
  plan.peak_bytes_estimate = kBaselineBytes + kWriterBufferBytes + largest_step;

  // Shards as the writer will cut them: in order, a new one when the next tensor would overflow.
  uint64_t shard_bytes = 0;
  for (const auto& target : plan.targets) {
    if (plan.shard_count == 0 || (shard_bytes > 0 && shard_bytes + target.nbytes() > plan.max_shard_bytes)) {
      ++plan.shard_count;
      shard_bytes = 0;
    }
    shard_bytes += target.nbytes();
  }
  return plan;
}

}  // namespace prime::convert
