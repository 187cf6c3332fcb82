#include "convert/weight_map.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>

#include "io/architecture.h"
#include "util/error.h"

namespace prime::convert {
namespace {

constexpr double kInitStd = 0.02;

at::Generator generator_for(const std::string& name, uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(tensor_seed(name, seed));
}

}  // namespace

InitRecipe parse_init_recipe(const std::string& text) {
  if (text == "hmf") return InitRecipe::Hmf;
  if (text == "head") return InitRecipe::Head;
  if (text == "mambainllama") return InitRecipe::MambaInLlama;
  if (text == "random") return InitRecipe::Random;
  throw user_error("unknown --init '", text, "' (known: hmf, head, mambainllama, random)");
}

std::string init_recipe_name(InitRecipe recipe) {
  switch (recipe) {
    case InitRecipe::Hmf: return "hmf";
    case InitRecipe::Head: return "head";
    case InitRecipe::MambaInLlama: return "mambainllama";
    case InitRecipe::Random: return "random";
  }
  return "?";
}

std::string init_recipe_description(InitRecipe recipe) {
  const std::string rest =
      "; the rest random: projections and convs N(0, 0.02), biases 0, norms 1, Mamba-2 D 1, "
      "A_log = log U(0,16), dt_bias = softplus^-1(dt) with dt log-uniform in [1e-3, 0.1]";
  switch (recipe) {
    case InitRecipe::Hmf:
      return "HMF priming: q/k/v/o_proj <- W_Q/W_K/W_V/W_O (Mamba-2: C/B/x rows, out_proj), gate g_proj (Mamba-2 z "
             "rows) = 0.5*(W_O^T + R(W_V)) with W_V's rows repeated G times (row r <- row r/G), Mamba-2 "
             "B_norm/C_norm <- k_norm/q_norm; Qwen3 q_norm/k_norm dropped for GKA/GDN; SWA keeps the attention "
             "weights" + rest;
    case InitRecipe::Head:
      return "as hmf, but the gate's R(W_V) repeats whole head blocks (expanded head e <- kv head e/G), as the "
             "forward expands heads" + rest;
    case InitRecipe::MambaInLlama:
      return "MambaInLlama: as hmf, but the gate g_proj / Mamba-2 z rows are random too (as are Mamba-2's dt rows)" +
             rest;
    case InitRecipe::Random:
      return "no weight transfer into SSM layers (ablation baseline; SWA layers still keep the attention weights)" +
             rest;
  }
  return "";
}

uint64_t TargetTensor::nbytes() const {
  uint64_t count = 1;
  for (int64_t extent : shape) count *= static_cast<uint64_t>(extent);
  return count * at::elementSize(dtype);
}

std::vector<std::string> AttentionSource::all() const {
  std::vector<std::string> names;
  for (const std::string* name : {&q, &k, &v, &o, &q_bias, &k_bias, &v_bias, &o_bias, &q_norm, &k_norm})
    if (!name->empty()) names.push_back(*name);
  return names;
}

AttentionSource attention_source(const io::ModelConfig& source, int64_t layer) {
  const auto& arch = io::find_architecture(source.model_type, source.architecture, source.model_type);
  const std::string prefix = arch.name("attention_prefix", layer);
  AttentionSource attention;
  attention.q = prefix + "q_proj.weight";
  attention.k = prefix + "k_proj.weight";
  attention.v = prefix + "v_proj.weight";
  attention.o = prefix + "o_proj.weight";
  if (source.attention_bias) {  // as io::transformer_tensor_specs: Qwen2 has no o_proj bias
    attention.q_bias = prefix + "q_proj.bias";
    attention.k_bias = prefix + "k_proj.bias";
    attention.v_bias = prefix + "v_proj.bias";
    if (source.family != "qwen2") attention.o_bias = prefix + "o_proj.bias";
  }
  if (source.qk_norm) {
    attention.q_norm = prefix + "q_norm.weight";
    attention.k_norm = prefix + "k_norm.weight";
  }
  return attention;
}

std::vector<TargetTensor> layer_targets(const LayerInit& init) {
  std::vector<TargetTensor> targets;
  if (init.symbol == "GKA") targets = gka_targets(init);
  else if (init.symbol == "GDN") targets = gdn_targets(init);
  else if (init.symbol == "M2") targets = mamba2_targets(init);
  else if (init.symbol == "SWA") targets = swa_targets(init);
  else throw internal_error("no weight map for layer type ", init.symbol);
  PRIME_CHECK(targets.size() == init.specs.size(), "weight map of ", init.symbol, " made ", targets.size(),
              " tensors for ", init.specs.size(), " specs");
  for (size_t i = 0; i < targets.size(); ++i)
    PRIME_CHECK(targets[i].name == init.specs[i].name && targets[i].shape == init.specs[i].shape,
                "weight map of ", init.symbol, " disagrees with its specs at ", init.specs[i].name);
  return targets;
}

uint64_t tensor_seed(const std::string& name, uint64_t seed) {
  // FNV-1a over the name, started from the seed: independent streams per tensor.
  uint64_t hash = 0xcbf29ce484222325ull ^ (seed * 0x9E3779B97F4A7C15ull + 0x7072696d65ull);
  for (unsigned char c : name) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

at::Tensor normal_init(const std::string& name, at::IntArrayRef shape, uint64_t seed) {
  auto generator = generator_for(name, seed);
  return at::normal(0.0, kInitStd, shape, generator, at::TensorOptions().dtype(at::kFloat));
}

at::Tensor a_log_init(const std::string& name, int64_t heads, uint64_t seed) {
  auto generator = generator_for(name, seed);
  at::Tensor A = at::empty({heads}, at::kFloat).uniform_(0.0, 16.0, generator);
  return A.clamp_min(1e-6).log();
}

at::Tensor dt_bias_init(const std::string& name, int64_t heads, uint64_t seed) {
  auto generator = generator_for(name, seed);
  const double low = std::log(1e-3), high = std::log(0.1);
  at::Tensor u = at::empty({heads}, at::kDouble).uniform_(0.0, 1.0, generator);
  at::Tensor dt = (u * (high - low) + low).exp().clamp_min(1e-4);
  return (dt + at::log(-at::expm1(-dt))).to(at::kFloat);
}

at::Tensor repeat_value_rows(const at::Tensor& v_proj, int64_t rows, int64_t head_dim, GateMode mode) {
  const int64_t kv_rows = v_proj.size(0), d = v_proj.size(1);
  PRIME_CHECK(kv_rows > 0 && rows % kv_rows == 0 && kv_rows % head_dim == 0, "cannot expand W_V of ", kv_rows,
              " rows to ", rows);
  const int64_t group = rows / kv_rows;
  if (mode == GateMode::RowRepeat) return v_proj.repeat_interleave(group, 0);
  return v_proj.reshape({kv_rows / head_dim, head_dim, d}).repeat_interleave(group, 0).reshape({rows, d});
}

void write_gate(const at::Tensor& o_proj, const at::Tensor& v_proj, int64_t head_dim, GateMode mode, at::Tensor out) {
  const int64_t rows = o_proj.size(1), kv_rows = v_proj.size(0);
  PRIME_CHECK(o_proj.size(0) == v_proj.size(1), "W_O and W_V disagree on the hidden size");
  PRIME_CHECK(out.dim() == 2 && out.size(0) == rows && out.size(1) == o_proj.size(0), "gate output shape");
  PRIME_CHECK(kv_rows > 0 && rows % kv_rows == 0, "cannot expand W_V of ", kv_rows, " rows to ", rows);
  const int64_t group = rows / kv_rows;
  // Blocks of whole groups (G*D rows read one kv head), about 512 rows each.
  const int64_t unit = group * head_dim, block = std::max<int64_t>(1, 512 / unit) * unit;
  for (int64_t first = 0; first < rows; first += block) {
    const int64_t count = std::min(block, rows - first);
    // In fp32: 0.5*(a + b) rounds once to the output dtype, which equals HMF's add-then-halve
    // in bf16 (halving is exact).
    at::Tensor repeated =
        repeat_value_rows(v_proj.narrow(0, first / group, count / group).to(at::kFloat), count, head_dim, mode);
    out.narrow(0, first, count).copy_((o_proj.narrow(1, first, count).to(at::kFloat).t() + repeated).mul_(0.5));
  }
}

at::Tensor gate_from_attention(const at::Tensor& o_proj, const at::Tensor& v_proj, int64_t head_dim, GateMode mode,
                               at::ScalarType dtype) {
  at::Tensor out = at::empty({o_proj.size(1), o_proj.size(0)}, at::TensorOptions().dtype(dtype));
  write_gate(o_proj, v_proj, head_dim, mode, out);
  return out;
}

TargetTensor copy_target(const LayerInit& init, const std::string& name, const std::string& source_name,
                         std::vector<int64_t> shape) {
  TargetTensor target;
  target.name = name;
  target.dtype = init.forced_dtype ? *init.forced_dtype : init.source_dtype(source_name);
  target.shape = std::move(shape);
  target.how = "copy";
  target.sources = {source_name};
  target.copy = true;
  const at::ScalarType dtype = target.dtype;
  target.make = [source_name, dtype](const SourceReader& reader) { return reader.tensor(source_name).to(dtype); };
  return target;
}

TargetTensor normal_target(const LayerInit& init, const std::string& name, std::vector<int64_t> shape) {
  TargetTensor target;
  target.name = name;
  target.dtype = init.dtype;
  target.shape = std::move(shape);
  target.how = "N(0, 0.02)";
  const uint64_t seed = init.seed;
  const at::ScalarType dtype = target.dtype;
  const std::vector<int64_t> dims = target.shape;
  target.make = [name, dims, seed, dtype](const SourceReader&) { return normal_init(name, dims, seed).to(dtype); };
  return target;
}

TargetTensor fill_target(const std::string& name, at::ScalarType dtype, std::vector<int64_t> shape, double value) {
  TargetTensor target;
  target.name = name;
  target.dtype = dtype;
  target.shape = std::move(shape);
  target.how = value == 0.0 ? "zeros" : value == 1.0 ? "ones" : "constant";
  const std::vector<int64_t> dims = target.shape;
  target.make = [dims, dtype, value](const SourceReader&) { return at::full(dims, value, at::TensorOptions().dtype(dtype)); };
  return target;
}

TargetTensor a_log_target(const LayerInit& init, const std::string& name, int64_t heads) {
  TargetTensor target{name, at::kFloat, {heads}, "log U(0, 16)", {}, false, {}};
  const uint64_t seed = init.seed;
  target.make = [name, heads, seed](const SourceReader&) { return a_log_init(name, heads, seed); };
  return target;
}

TargetTensor dt_bias_target(const LayerInit& init, const std::string& name, int64_t heads) {
  TargetTensor target{name, at::kFloat, {heads}, "softplus^-1(dt), dt log-U[1e-3, 0.1]", {}, false, {}};
  const uint64_t seed = init.seed;
  target.make = [name, heads, seed](const SourceReader&) { return dt_bias_init(name, heads, seed); };
  return target;
}

TargetTensor transfer_target(const LayerInit& init, const std::string& name, const std::string& source_name,
                             std::vector<int64_t> shape) {
  if (init.recipe == InitRecipe::Random) return normal_target(init, name, std::move(shape));
  return copy_target(init, name, source_name, std::move(shape));
}

TargetTensor gate_target(const LayerInit& init, const std::string& name, std::vector<int64_t> shape) {
  if (init.recipe == InitRecipe::Random || init.recipe == InitRecipe::MambaInLlama)
    return normal_target(init, name, std::move(shape));
  TargetTensor target;
  target.name = name;
  target.dtype = init.dtype;
  target.shape = std::move(shape);
  const GateMode mode = init.recipe == InitRecipe::Head ? GateMode::HeadRepeat : GateMode::RowRepeat;
  target.how = mode == GateMode::HeadRepeat ? "0.5*(W_O^T + R_head(W_V))" : "0.5*(W_O^T + R_row(W_V))";
  target.sources = {init.attention.o, init.attention.v};
  const std::string o = init.attention.o, v = init.attention.v;
  const int64_t head_dim = init.source->head_dim;
  const at::ScalarType dtype = target.dtype;
  target.make = [o, v, head_dim, mode, dtype](const SourceReader& reader) {
    return gate_from_attention(reader.tensor(o), reader.tensor(v), head_dim, mode, dtype);
  };
  return target;
}

}  // namespace prime::convert
