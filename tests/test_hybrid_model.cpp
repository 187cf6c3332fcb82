// HybridModel: per-layer mixers from hybrid_override_pattern, the formats.md tensor layout,
// prefill + decode through the per-layer cache, state bytes, and bad hybrid configs.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include "eval/generate.h"
#include "io/source.h"
#include "io/synthetic.h"
#include "model/hybrid_model.h"
#include "test_helpers.h"
#include "util/error.h"

using namespace prime;
using Catch::Matchers::Contains;

namespace {

constexpr int64_t kHidden = 64, kHeads = 4, kKvHeads = 2, kHeadDim = 16;

// The tensors formats.md places under each SSM prefix, written out independently of the mixers.
std::vector<io::TensorSpec> ssm_specs(const std::string& symbol, const std::string& layer_prefix) {
  const int64_t d = kHidden, D = kHeadDim, H = kHeads, q = kHeads * D, kv = kKvHeads * D;
  std::vector<io::TensorSpec> specs;
  auto add = [&](const std::string& prefix, const std::string& name, std::vector<int64_t> shape) {
    specs.push_back({layer_prefix + prefix + name, std::move(shape)});
  };
  if (symbol == "GDN" || symbol == "GKA") {
    const std::string p = symbol == "GDN" ? "gdn." : "gka.";
    add(p, "q_proj.weight", {q, d});
    add(p, "k_proj.weight", {kv, d});
    add(p, "v_proj.weight", {kv, d});
    add(p, "b_proj.weight", {H, d});
    add(p, symbol == "GDN" ? "gk_proj.weight" : "a_proj.weight", {H, d});
    add(p, "A_log", {H});
    add(p, "dt_bias", {H});
    add(p, "q_conv1d.weight", {q, 1, 4});
    add(p, "k_conv1d.weight", {kv, 1, 4});
    add(p, "v_conv1d.weight", {kv, 1, 4});
    add(p, "g_proj.weight", {H * D, d});
    add(p, "o_norm.weight", {D});
    add(p, "o_proj.weight", {d, H * D});
    if (symbol == "GKA") {
      add(p, "b_proj.bias", {H});
      add(p, "alpha_proj.weight", {H, d});
      add(p, "alpha_proj.bias", {H});
    }
  } else if (symbol == "M2") {
    add("mamba.", "in_proj.weight", {2 * q + 2 * kv + H, d});
    add("mamba.", "conv1d.weight", {2 * kv + q, 1, 4});
    add("mamba.", "conv1d.bias", {2 * kv + q});
    add("mamba.", "dt_bias", {H});
    add("mamba.", "A_log", {H});
    add("mamba.", "D", {H});
    add("mamba.", "norm.weight", {q});
    add("mamba.", "out_proj.weight", {d, q});
    add("mamba.", "B_norm.weight", {D});
    add("mamba.", "C_norm.weight", {D});
  } else if (symbol == "SWA") {
    for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}) {
      const bool is_q = std::string(name).rfind("q_", 0) == 0, is_o = std::string(name).rfind("o_", 0) == 0;
      add("swa.", name, is_o ? std::vector<int64_t>{d, q} : std::vector<int64_t>{is_q ? q : kv, d});
    }
    add("swa.", "q_norm.weight", {D});
    add("swa.", "k_norm.weight", {D});
  }
  return specs;
}

struct Built {
  io::ModelConfig config;
  model::TensorMap weights;
};

Built build_hybrid(const std::vector<std::string>& pattern) {
  auto source = io::resolve_source("synthetic:qwen3-0.6b@layers=" + std::to_string(pattern.size()) +
                                   ",hidden=64,heads=4,kv_heads=2,head_dim=16,intermediate=96,vocab=97,seed=5");
  nlohmann::json raw = source.config.raw;
  raw["model_type"] = "hybrid_qwen3";
  raw["hybrid_override_pattern"] = io::join_layer_pattern(pattern);
  raw["gdn_config"] = {{"hidden_size", kHidden}, {"head_dim", kHeadDim}, {"num_q_heads", kHeads},
                       {"num_k_heads", kKvHeads}, {"num_v_heads", kKvHeads}};
  raw["gka_config"] = {{"hidden_size", kHidden}, {"head_dim", kHeadDim}, {"num_q_heads", kHeads},
                       {"num_k_heads", kKvHeads}, {"num_v_heads", kKvHeads}, {"num_iter", 30}};
  raw["mamba2_config"] = {{"d_model", kHidden}, {"d_inner", kHeads * kHeadDim}, {"d_xb", kKvHeads * kHeadDim},
                          {"ssm_cfg", {{"d_state", kHeadDim}, {"ngroups", kHeads}}}};
  raw["swa_config"] = {{"window_size", 6}};
  Built built{io::ModelConfig::from_json(raw, "test hybrid"), {}};
  built.weights = io::load_source_weights(source);
  for (size_t i = 0; i < pattern.size(); ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    if (pattern[i] == "*") continue;
    for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "q_norm.weight",
                             "k_norm.weight"})
      built.weights.erase(prefix + "self_attn." + name);
    for (const auto& spec : ssm_specs(pattern[i], prefix))
      built.weights[spec.name] = io::synthetic_tensor(spec.name, spec.shape, 11);
  }
  for (auto& [name, tensor] : built.weights)  // decay parameters in a realistic range
    if (name.size() > 5 && name.compare(name.size() - 5, 5, "A_log") == 0) tensor = at::log(at::rand_like(tensor) * 15 + 1);
  return built;
}

}  // namespace

TEST_CASE("hybrid model: cached prefill + decode equals the full forward, for every layer type", "[hybrid]") {
  at::NoGradGuard no_grad;
  const std::vector<std::string> pattern = {"GDN", "*", "M2", "SWA", "GKA", "*"};
  Built built = build_hybrid(pattern);
  model::HybridModel model(built.config, model::prepare_weights(built.weights, {}));
  for (size_t i = 0; i < pattern.size(); ++i) CHECK(model.mixer(i).symbol() == pattern[i]);

  at::Tensor ids = at::randint(0, 97, {2, 23}, at::kLong);
  at::Tensor full = model.forward(ids);
  auto cache = model.make_cache(2);
  std::vector<at::Tensor> parts{model.forward(ids.narrow(1, 0, 9), &cache)};
  for (int64_t t = 9; t < 23; ++t) parts.push_back(model.forward(ids.narrow(1, t, 1), &cache));
  const double error = test::relative_error(at::cat(parts, 1), full);
  INFO("max relative error " << error);
  CHECK(error <= 1e-5);
  CHECK(cache.length() == 23);

  // State bytes: fixed for SSM layers, growing for attention, bounded by the window for SWA.
  const int64_t H = kHeads, D = kHeadDim;
  CHECK(cache.layers[0]->bytes_per_sequence() >= H * D * D * 4);      // GDN state, fp32
  CHECK(cache.layers[4]->bytes_per_sequence() >= 2 * H * D * D * 4);  // GKA: H and S
  CHECK(cache.layers[1]->bytes_per_sequence() == 2 * 23 * kKvHeads * D * 4);
  CHECK(cache.layers[3]->bytes_per_sequence() <= cache.layers[1]->bytes_per_sequence());

  auto tokens = eval::greedy_generate(model, ids.narrow(0, 0, 1).narrow(1, 0, 5), {6, {}});
  CHECK(tokens.front().size() == 6);
}

TEST_CASE("hybrid model: bad hybrid configs and tensors name the layer", "[hybrid][bad-input]") {
  Built built = build_hybrid({"GDN", "*"});
  nlohmann::json raw = built.config.raw;
  raw["hybrid_override_pattern"] = "GDN-*-*";
  CHECK_THROWS_WITH(io::ModelConfig::from_json(raw, "x"), Contains("num_hidden_layers"));
  raw["hybrid_override_pattern"] = "GDN-MAMBA";
  CHECK_THROWS_WITH(io::ModelConfig::from_json(raw, "x"), Contains("unknown layer symbol 'MAMBA'"));
  raw["hybrid_override_pattern"] = "GDN-*";
  raw.erase("gdn_config");
  CHECK_THROWS_WITH(model::HybridModel(io::ModelConfig::from_json(raw, "x"), built.weights), Contains("gdn_config"));
  auto wrong = built.weights;
  wrong["model.layers.0.gdn.k_proj.weight"] = at::zeros({3, kHidden});
  CHECK_THROWS_WITH(model::HybridModel(built.config, wrong), Contains("model.layers.0.gdn.k_proj.weight"));
  auto missing = built.weights;
  missing.erase("model.layers.0.gdn.o_norm.weight");
  CHECK_THROWS_WITH(model::HybridModel(built.config, missing), Contains("missing tensor model.layers.0.gdn.o_norm.weight"));
}

TEST_CASE("hybrid model on CUDA: matches CPU, cached decode equals full forward (fp32 and bf16)", "[hybrid][gpu]") {
  if (!at::hasCUDA()) {
    WARN("no CUDA device: skipped");
    return;
  }
  at::NoGradGuard no_grad;
  at::globalContext().setAllowTF32CuBLAS(false);
  const std::vector<std::string> pattern = {"GDN", "*", "M2", "SWA", "GKA", "*"};
  Built built = build_hybrid(pattern);
  model::HybridModel cpu(built.config, model::prepare_weights(built.weights, {}));
  at::Tensor ids = at::randint(0, 97, {2, 23}, at::kLong);
  at::Tensor expected = cpu.forward(ids);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    model::HybridModel gpu(built.config, model::prepare_weights(built.weights, {at::Device(at::kCUDA, 0), dtype}));
    at::Tensor full = gpu.forward(ids);
    auto cache = gpu.make_cache(2);
    std::vector<at::Tensor> parts{gpu.forward(ids.narrow(1, 0, 9), &cache)};
    for (int64_t t = 9; t < 23; ++t) parts.push_back(gpu.forward(ids.narrow(1, t, 1), &cache));
    const double vs_cpu = test::relative_error(full, expected);
    const double cached = test::relative_error(at::cat(parts, 1), full);
    std::cout << "hybrid cuda " << c10::toString(dtype) << ": vs cpu " << vs_cpu << ", cached vs full " << cached << "\n";
    CHECK(vs_cpu <= (dtype == at::kFloat ? 1e-5 : 5e-2));
    CHECK(cached <= (dtype == at::kFloat ? 1e-5 : 5e-2));
  }
}
