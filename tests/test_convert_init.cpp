// prime-convert's weight maps and output config: the gate formulas element by element, the
// random parts' distributions and seeding, sub-configs that the lib/model loaders accept, and
// tensor specs that match the loaders' shapes.
#include <catch2/catch.hpp>

#include "convert/hybrid_config.h"
#include "convert/weight_map.h"
#include "io/source.h"
#include "model/gdn.h"
#include "model/gka.h"
#include "model/mamba2.h"
#include "test_convert_util.h"
#include "util/error.h"

using namespace prime;
using namespace prime::convert;
using Catch::Matchers::Contains;

TEST_CASE("convert init: gate = 0.5*(W_O^T + R(W_V)), row-repeat (HMF) and head-repeat", "[convert]") {
  const int64_t d = 6, D = 2, hq = 4, hkv = 2, G = hq / hkv;
  const at::Tensor o = at::randn({d, hq * D}, at::kFloat), v = at::randn({hkv * D, d}, at::kFloat);
  const at::Tensor row = gate_from_attention(o, v, D, GateMode::RowRepeat);
  const at::Tensor head = gate_from_attention(o, v, D, GateMode::HeadRepeat);
  REQUIRE(row.sizes() == at::IntArrayRef({hq * D, d}));
  auto O = o.accessor<float, 2>(), V = v.accessor<float, 2>();
  auto R = row.accessor<float, 2>(), H = head.accessor<float, 2>();
  for (int64_t r = 0; r < hq * D; ++r)
    for (int64_t c = 0; c < d; ++c) {
      CHECK(R[r][c] == 0.5f * (O[c][r] + V[r / G][c]));                       // HMF: row r <- row r/G
      CHECK(H[r][c] == 0.5f * (O[c][r] + V[(r / D) / G * D + r % D][c]));     // expanded head e <- kv head e/G
    }
  CHECK_FALSE(at::equal(row, head));
}

TEST_CASE("convert init: random parts follow their distributions and are seeded per name", "[convert]") {
  const int64_t n = 200000;
  const at::Tensor a_log = a_log_init("model.layers.0.gka.A_log", n, 7);
  const at::Tensor A = a_log.exp();
  CHECK(a_log.scalar_type() == at::kFloat);
  CHECK(A.min().item<double>() > 0.0);
  CHECK(A.max().item<double>() <= 16.0 * (1 + 1e-6));
  CHECK(A.mean().item<double>() == Approx(8.0).margin(0.05));                       // U(0, 16)
  CHECK((A < 4.0).to(at::kDouble).mean().item<double>() == Approx(0.25).margin(0.01));

  const at::Tensor dt_bias = dt_bias_init("model.layers.0.gka.dt_bias", n, 7);
  const at::Tensor dt = at::softplus(dt_bias.to(at::kDouble));
  CHECK(dt.min().item<double>() >= 1e-3 * (1 - 1e-5));
  CHECK(dt.max().item<double>() <= 0.1 * (1 + 1e-5));
  // log-uniform on [ln 1e-3, ln 0.1]: mean of ln dt is the midpoint, ln 1e-2.
  CHECK(dt.log().mean().item<double>() == Approx(std::log(1e-2)).margin(0.02));

  const at::Tensor w = normal_init("model.layers.0.gka.a_proj.weight", {400, 500}, 7);
  CHECK(w.mean().item<double>() == Approx(0.0).margin(2e-4));
  CHECK(w.std().item<double>() == Approx(0.02).epsilon(0.01));

  // Same (name, seed) -> same bytes; another name or seed -> other values.
  CHECK(at::equal(a_log_init("x.A_log", 16, 3), a_log_init("x.A_log", 16, 3)));
  CHECK_FALSE(at::equal(a_log_init("x.A_log", 16, 3), a_log_init("y.A_log", 16, 3)));
  CHECK_FALSE(at::equal(normal_init("x", {8}, 3), normal_init("x", {8}, 4)));
  CHECK(at::equal(normal_init("x", {1000, 300}, 3), normal_init("x", {1000, 300}, 3)));
}

TEST_CASE("convert config: sub-configs load through the model configs' from_json", "[convert]") {
  const io::Source source = io::resolve_source("synthetic:qwen3-8b");
  const auto pattern = io::parse_layer_pattern(
      "*-GKA-GDN-M2-SWA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-GKA-"
      "GKA-GKA-GKA-GKA-GKA-GKA-GKA-*",
      "test");
  HybridOptions options;
  options.swa_window = 512;
  const nlohmann::json config = hybrid_config_json(source.config, pattern, options);
  CHECK(config["model_type"] == "hybrid_qwen3");
  CHECK(config["architectures"] == nlohmann::json::array({"HybridQwen3ForCausalLM"}));
  CHECK(config["hybrid_override_pattern"] == io::join_layer_pattern(pattern));
  CHECK(config["layer_types"] == nlohmann::json(pattern));
  CHECK(config["hidden_size"] == 4096);  // the source's own fields stay
  CHECK(config["swa_config"]["window_size"] == 512);
  const auto gka = model::GkaConfig::from_json(config["gka_config"], "test");
  CHECK(gka.num_q_heads == 32);
  CHECK(gka.num_k_heads == 8);
  CHECK(gka.num_heads() == 32);
  CHECK(gka.head_dim == 128);
  CHECK(gka.num_iter == 30);
  CHECK(gka.ridge_strength == 0.02);
  CHECK(config["gka_config"]["solver_type"] == "chebyshev");
  CHECK(config["gka_config"]["kv_proj_rank"].is_null());
  const auto gdn = model::GdnConfig::from_json(config["gdn_config"], "test");
  CHECK(gdn.num_heads() == 32);
  CHECK(gdn.norm_eps == 1e-5);
  const auto m2 = model::Mamba2Config::from_json(config["mamba2_config"], "test");
  CHECK(m2.num_q_heads == 32);
  CHECK(m2.num_kv_heads == 8);
  CHECK(m2.in_proj_rows() == 10272);  // design/ssm-layers.md: 4096|1024|1024|4096|32
  CHECK(m2.conv_channels() == 6144);
  CHECK(config["mamba2_config"]["ssm_cfg"]["ngroups"] == 32);

  // The parsed config has the pattern; specs cover every tensor with the loaders' shapes.
  const io::ModelConfig hybrid = io::ModelConfig::from_json(config, "test");
  CHECK(hybrid.layer_pattern == pattern);
  const auto specs = hybrid_tensor_specs(hybrid);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& spec : specs) shapes[spec.name] = spec.shape;
  CHECK(shapes.size() == specs.size());
  CHECK(shapes.at("model.layers.0.self_attn.q_norm.weight") == std::vector<int64_t>{128});
  CHECK(shapes.count("model.layers.1.self_attn.q_proj.weight") == 0);
  CHECK(shapes.at("model.layers.1.gka.g_proj.weight") == std::vector<int64_t>{4096, 4096});
  CHECK(shapes.at("model.layers.1.gka.k_conv1d.weight") == std::vector<int64_t>{1024, 1, 4});
  CHECK(shapes.at("model.layers.1.gka.alpha_proj.bias") == std::vector<int64_t>{32});
  CHECK(shapes.at("model.layers.2.gdn.gk_proj.weight") == std::vector<int64_t>{32, 4096});
  CHECK(shapes.at("model.layers.3.mamba.in_proj.weight") == std::vector<int64_t>{10272, 4096});
  CHECK(shapes.at("model.layers.3.mamba.conv1d.bias") == std::vector<int64_t>{6144});
  CHECK(shapes.at("model.layers.3.mamba.B_norm.weight") == std::vector<int64_t>{128});
  CHECK(shapes.at("model.layers.4.swa.k_norm.weight") == std::vector<int64_t>{128});
  CHECK(shapes.at("model.layers.4.mlp.down_proj.weight") == std::vector<int64_t>{4096, 12288});
  CHECK(shapes.count("lm_head.weight") == 1);
  CHECK(specs.front().name == "model.embed_tokens.weight");
  CHECK(specs.back().name == "lm_head.weight");
  CHECK(is_fp32_parameter("model.layers.3.mamba.D"));
  CHECK(is_fp32_parameter("model.layers.1.gka.dt_bias"));
  CHECK_FALSE(is_fp32_parameter("model.layers.1.gka.o_norm.weight"));

  // An all-attention pattern has exactly the Transformer's tensors.
  const auto plain = io::ModelConfig::from_json(
      hybrid_config_json(source.config, std::vector<std::string>(36, "*")), "test");
  const auto transformer = io::transformer_tensor_specs(source.config);
  const auto all_attention = hybrid_tensor_specs(plain);
  REQUIRE(all_attention.size() == transformer.size());
  for (size_t i = 0; i < transformer.size(); ++i) CHECK(all_attention[i].name == transformer[i].name);
}

TEST_CASE("convert config: bad patterns and sources are refused", "[convert]") {
  const io::Source source = io::resolve_source(test::tiny_synthetic(2));
  CHECK_THROWS_WITH(hybrid_config_json(source.config, {"GKA"}), Contains("pattern has 1 layers but the source has 2"));
  CHECK_THROWS_WITH(hybrid_config_json(source.config, {"GKA", "RNN"}), Contains("unknown layer symbol 'RNN'"));
  HybridOptions options;
  options.swa_window = 0;
  CHECK_THROWS_WITH(hybrid_config_json(source.config, {"SWA", "*"}, options), Contains("window must be > 0"));
  nlohmann::json sliding = source.config.raw;
  sliding["layer_types"] = {"full_attention", "sliding_attention"};
  sliding["sliding_window"] = 16;
  const auto sliding_config = io::ModelConfig::from_json(sliding, "test");
  CHECK_THROWS_WITH(hybrid_config_json(sliding_config, {"GKA", "*"}), Contains("sliding_attention"));
  CHECK_THROWS_AS(parse_init_recipe("xavier"), UserError);
  CHECK(parse_init_recipe("mambainllama") == InitRecipe::MambaInLlama);
}
