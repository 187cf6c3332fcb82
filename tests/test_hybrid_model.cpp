// HybridModel: per-layer mixers from hybrid_override_pattern, the formats.md tensor layout,
// prefill + decode through the per-layer cache, state bytes, and bad hybrid configs.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include "eval/generate.h"
#include "io/source.h"
#include "io/synthetic.h"
#include "model/hybrid_model.h"
#include "test_helpers.h"
#include "test_hybrid_util.h"
#include "util/error.h"

using namespace prime;
using test::Built;
using test::build_hybrid;
using test::kHeadDim;
using test::kHeads;
using test::kHidden;
using test::kKvHeads;
using Catch::Matchers::Contains;


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
  if (!prime::test::gpu_available_or_fail()) return;
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
