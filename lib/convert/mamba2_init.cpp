// Mamba-2 from an attention layer (design/ssm-layers.md, "Initialisation from attention"):
// in_proj rows [z | x | B | C | dt] = [gate | W_V | W_K | W_Q | random], out_proj <- W_O,
// B_norm/C_norm <- k_norm/q_norm (ones when the source has none); conv1d random with bias 0,
// A_log and dt_bias random, D = 1, the output norm 1. mambainllama leaves z random too.
#include "convert/weight_map.h"
#include "util/error.h"

namespace prime::convert {
namespace {

TargetTensor in_proj_target(const LayerInit& init, const std::string& name, std::vector<int64_t> shape) {
  if (init.recipe == InitRecipe::Random) return normal_target(init, name, std::move(shape));
  const int64_t D = init.source->head_dim;
  const int64_t q_rows = init.source->num_attention_heads * D, kv_rows = init.source->num_key_value_heads * D;
  const int64_t heads = init.source->num_attention_heads, d = shape.at(1);
  PRIME_CHECK(shape.at(0) == 2 * q_rows + 2 * kv_rows + heads, "Mamba-2 in_proj rows of ", name);
  const bool random_z = init.recipe == InitRecipe::MambaInLlama;
  const GateMode mode = init.recipe == InitRecipe::Head ? GateMode::HeadRepeat : GateMode::RowRepeat;

  TargetTensor target;
  target.name = name;
  target.dtype = init.dtype;
  target.shape = std::move(shape);
  target.how = std::string("rows [z | x | B | C | dt] = [") +
               (random_z ? "N(0, 0.02)" : mode == GateMode::HeadRepeat ? "0.5*(W_O^T + R_head(W_V))"
                                                                        : "0.5*(W_O^T + R_row(W_V))") +
               " | W_V | W_K | W_Q | N(0, 0.02)]";
  target.sources = {init.attention.o, init.attention.v, init.attention.k, init.attention.q};
  if (random_z) target.sources.erase(target.sources.begin());
  const AttentionSource attention = init.attention;
  const uint64_t seed = init.seed;
  const at::ScalarType dtype = target.dtype;
  target.make = [=](const SourceReader& reader) {
    // Filled slice by slice, the gate block by block: no whole fp32 copy of anything.
    at::Tensor out = at::empty({2 * q_rows + 2 * kv_rows + heads, d}, at::TensorOptions().dtype(dtype));
    if (random_z)
      out.narrow(0, 0, q_rows).copy_(normal_init(name + "#z", {q_rows, d}, seed));
    else
      write_gate(reader.tensor(attention.o), reader.tensor(attention.v), D, mode, out.narrow(0, 0, q_rows));
    out.narrow(0, q_rows, kv_rows).copy_(reader.tensor(attention.v));
    out.narrow(0, q_rows + kv_rows, kv_rows).copy_(reader.tensor(attention.k));
    out.narrow(0, q_rows + 2 * kv_rows, q_rows).copy_(reader.tensor(attention.q));
    out.narrow(0, 2 * q_rows + 2 * kv_rows, heads).copy_(normal_init(name + "#dt", {heads, d}, seed));
    return out;
  };
  return target;
}

// B_norm/C_norm from the attention's k_norm/q_norm where the source has them (Qwen3).
TargetTensor qk_norm_target(const LayerInit& init, const std::string& name, const std::string& source_norm,
                            std::vector<int64_t> shape) {
  if (source_norm.empty() || init.recipe == InitRecipe::Random)
    return fill_target(name, init.dtype, std::move(shape), 1.0);
  return copy_target(init, name, source_norm, std::move(shape));
}

}  // namespace

std::vector<TargetTensor> mamba2_targets(const LayerInit& init) {
  std::vector<TargetTensor> targets;
  for (const auto& spec : init.specs) {
    const std::string local = spec.name.substr(init.prefix.size());
    const auto& shape = spec.shape;
    if (local == "in_proj.weight") targets.push_back(in_proj_target(init, spec.name, shape));
    else if (local == "out_proj.weight") targets.push_back(transfer_target(init, spec.name, init.attention.o, shape));
    else if (local == "conv1d.weight") targets.push_back(normal_target(init, spec.name, shape));
    else if (local == "conv1d.bias") targets.push_back(fill_target(spec.name, init.dtype, shape, 0.0));
    else if (local == "A_log") targets.push_back(a_log_target(init, spec.name, shape.at(0)));
    else if (local == "dt_bias") targets.push_back(dt_bias_target(init, spec.name, shape.at(0)));
    else if (local == "D") targets.push_back(fill_target(spec.name, at::kFloat, shape, 1.0));
    else if (local == "norm.weight") targets.push_back(fill_target(spec.name, init.dtype, shape, 1.0));
    else if (local == "B_norm.weight") targets.push_back(qk_norm_target(init, spec.name, init.attention.k_norm, shape));
    else if (local == "C_norm.weight") targets.push_back(qk_norm_target(init, spec.name, init.attention.q_norm, shape));
    else throw internal_error("Mamba-2 weight map: no rule for ", spec.name);
  }
  return targets;
}

}  // namespace prime::convert
