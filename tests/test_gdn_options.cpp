// GDN mixer: gdn_config parsing and refusals, the optional features (conv bias, no short conv,
// no gate), bad weights, bf16 weights, and the CUDA path.
#include <catch2/catch.hpp>

#include "model/gdn.h"
#include "reference/ssm_reference.h"
#include "test_helpers.h"
#include "test_ssm_mixer_util.h"
#include "util/error.h"

namespace {

using prime::UserError;
using prime::model::GdnCache;
using prime::model::GdnConfig;
using prime::model::GdnMixer;
using namespace prime::testing;
using Catch::Matchers::Contains;

const std::string kPrefix = "model.layers.5.gdn.";

nlohmann::json formats_config() {  // the gdn_config of design/formats.md for a Qwen3-8B layer
  return nlohmann::json::parse(R"({"hidden_size": 4096, "head_dim": 128, "num_q_heads": 32,
      "num_k_heads": 8, "num_v_heads": 8, "use_gate": true, "use_short_conv": true,
      "allow_neg_eigval": false, "conv_size": 4, "conv_bias": false, "norm_eps": 1e-5,
      "kv_proj_rank": null, "kv_learnable_residual": false})");
}

prime::reference::Weights small_weights(uint64_t seed) {
  prime::reference::GdnDims dims;
  dims.hidden = 32;
  dims.head_dim = 8;
  dims.num_q_heads = 4;
  dims.num_kv_heads = 1;
  std::mt19937_64 rng(seed);
  return prime::reference::testing::random_gdn_weights(dims, rng);
}

prime::reference::GdnDims small_dims() {
  prime::reference::GdnDims dims;
  dims.hidden = 32;
  dims.head_dim = 8;
  dims.num_q_heads = 4;
  dims.num_kv_heads = 1;
  return dims;
}

}  // namespace

TEST_CASE("GDN config parses gdn_config and refuses what it cannot honour", "[gdn]") {
  SingleThreaded single_threaded;
  const GdnConfig config = GdnConfig::from_json(formats_config(), "3");
  CHECK(config.hidden_size == 4096);
  CHECK(config.num_q_heads == 32);
  CHECK(config.num_k_heads == 8);
  CHECK(config.num_heads() == 32);
  CHECK(config.norm_eps == 1e-5);
  CHECK(config.chunk_size == 64);

  auto refused = [](nlohmann::json sub, const std::string& option) {
    INFO(sub.dump());
    REQUIRE_THROWS_AS(GdnConfig::from_json(sub, "model.layers.7.gdn."), UserError);
    REQUIRE_THROWS_WITH(GdnConfig::from_json(sub, "model.layers.7.gdn."),
                        Contains("model.layers.7.gdn.") && Contains(option));
  };
  nlohmann::json sub = formats_config();
  sub["kv_proj_rank"] = 64;
  refused(sub, "kv_proj_rank");
  sub = formats_config();
  sub["use_fancy_thing"] = true;
  refused(sub, "use_fancy_thing");
  sub = formats_config();
  sub["conv_size"] = "four";
  refused(sub, "conv_size");
  sub = formats_config();
  sub["num_k_heads"] = 5;
  refused(sub, "num_k_heads");
  sub = formats_config();
  sub["head_dim"] = 0;
  refused(sub, "head_dim");
  sub = formats_config();
  sub.erase("hidden_size");
  refused(sub, "hidden_size");
  sub = formats_config();
  sub["mode"] = "parallel";
  refused(sub, "mode");
  sub = formats_config();
  sub["kv_learnable_residual"] = true;  // refused as in GKA: not implemented
  refused(sub, "kv_learnable_residual");
  sub = formats_config();
  sub["norm_eps"] = "small";
  refused(sub, "norm_eps");
  REQUIRE_THROWS_AS(GdnConfig::from_json(nlohmann::json::array(), "7"), UserError);

  // Accepted and honoured.
  sub = formats_config();
  sub["allow_neg_eigval"] = true;
  sub["conv_bias"] = true;
  sub["use_gate"] = false;
  sub["use_short_conv"] = false;
  sub["conv_size"] = 3;
  sub.erase("num_v_heads");             // defaults to num_q_heads, as in HMF
  const GdnConfig honoured = GdnConfig::from_json(sub, "7");
  CHECK(honoured.allow_neg_eigval);
  CHECK(honoured.conv_bias);
  CHECK_FALSE(honoured.use_gate);
  CHECK_FALSE(honoured.use_short_conv);
  CHECK(honoured.conv_size == 3);
  CHECK(honoured.num_v_heads == 32);
}

TEST_CASE("GDN bad weights name the layer and the tensor", "[gdn]") {
  SingleThreaded single_threaded;
  prime::reference::Weights weights = small_weights(41);
  const GdnConfig config(32, 8, 4, 1);
  REQUIRE_NOTHROW(GdnMixer(config, with_prefix(weights, kPrefix, at::kFloat), kPrefix));

  prime::reference::Weights wrong = weights;
  wrong["k_proj.weight"] = at::ones({16, 32}, at::kDouble);
  REQUIRE_THROWS_WITH(GdnMixer(config, with_prefix(wrong, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.gdn.k_proj.weight") && Contains("[16, 32]") &&
                          Contains("[8, 32]"));
  wrong = weights;
  wrong["A_log"] = at::ones({3}, at::kDouble);
  REQUIRE_THROWS_WITH(GdnMixer(config, with_prefix(wrong, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.gdn.A_log"));
  wrong = weights;
  wrong.erase("g_proj.weight");
  REQUIRE_THROWS_AS(GdnMixer(config, with_prefix(wrong, kPrefix, at::kFloat), kPrefix), UserError);
  REQUIRE_THROWS_WITH(GdnMixer(config, with_prefix(wrong, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.gdn.g_proj.weight"));
  GdnConfig with_bias = config;
  with_bias.conv_bias = true;  // no bias tensors in the map
  REQUIRE_THROWS_WITH(GdnMixer(with_bias, with_prefix(weights, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.gdn.q_conv1d.bias"));
  GdnConfig bad_heads = config;
  bad_heads.num_q_heads = 3;
  bad_heads.num_k_heads = 2;
  REQUIRE_THROWS_WITH(GdnMixer(bad_heads, with_prefix(weights, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.gdn."));
}

TEST_CASE("GDN options against the float64 reference", "[gdn]") {
  SingleThreaded single_threaded;
  prime::reference::Weights weights = small_weights(51);
  const at::Tensor x64 = random_input(2, 75, 32, 52);
  const at::Tensor x = x64.to(at::kFloat);
  const at::Tensor plain = prime::reference::gdn_forward(small_dims(), weights, x64);
  std::mt19937_64 rng(53);

  SECTION("conv_bias") {
    GdnConfig config(32, 8, 4, 1);
    config.conv_bias = true;
    config.chunk_size = 32;
    weights["q_conv1d.bias"] = prime::reference::testing::random_normal({32}, 0.3, rng);
    weights["k_conv1d.bias"] = prime::reference::testing::random_normal({8}, 0.3, rng);
    weights["v_conv1d.bias"] = prime::reference::testing::random_normal({8}, 0.3, rng);
    prime::reference::GdnDims dims = small_dims();
    dims.conv_bias = true;
    const at::Tensor expected = prime::reference::gdn_forward(dims, weights, x64);
    GdnMixer mixer(config, with_prefix(weights, kPrefix, at::kFloat), kPrefix);
    CHECK(forms_vs_reference(mixer, x, expected, "conv_bias T=75 chunk=32") <= 1e-5);
    CHECK(max_rel_error(expected, plain) > 1e-3);  // the bias changes the function
  }
  SECTION("use_short_conv false") {
    GdnConfig config(32, 8, 4, 1);
    config.use_short_conv = false;
    prime::reference::Weights no_conv = weights;
    for (const char* name : {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"})
      no_conv.erase(name);
    prime::reference::GdnDims dims = small_dims();
    dims.use_short_conv = false;
    const at::Tensor expected = prime::reference::gdn_forward(dims, no_conv, x64);
    GdnMixer mixer(config, with_prefix(no_conv, kPrefix, at::kFloat), kPrefix);
    CHECK(forms_vs_reference(mixer, x, expected, "no_short_conv T=75") <= 1e-5);
    CHECK(mixer.make_cache(2, at::kCPU)->bytes_per_sequence() == 4 * 4 * 8 * 8);
    CHECK(max_rel_error(expected, plain) > 1e-3);
  }
  SECTION("use_gate false") {
    GdnConfig config(32, 8, 4, 1);
    config.use_gate = false;
    prime::reference::Weights no_gate = weights;
    no_gate.erase("g_proj.weight");
    prime::reference::GdnDims dims = small_dims();
    dims.use_gate = false;
    const at::Tensor expected = prime::reference::gdn_forward(dims, no_gate, x64);
    GdnMixer mixer(config, with_prefix(no_gate, kPrefix, at::kFloat), kPrefix);
    CHECK(forms_vs_reference(mixer, x, expected, "no_gate T=75") <= 1e-5);
    CHECK(max_rel_error(expected, plain) > 1e-3);
  }
  SECTION("conv_size 3 and norm_eps 1e-2") {
    GdnConfig config(32, 8, 4, 1);
    config.conv_size = 3;
    config.norm_eps = 1e-2;
    for (auto [name, channels] : {std::pair{"q_conv1d.weight", 32}, {"k_conv1d.weight", 8},
                                  {"v_conv1d.weight", 8}})
      weights[name] = prime::reference::testing::random_normal({channels, 1, 3}, 0.5, rng);
    prime::reference::GdnDims dims = small_dims();
    dims.norm_eps = 1e-2;
    const at::Tensor expected = prime::reference::gdn_forward(dims, weights, x64);
    GdnMixer mixer(config, with_prefix(weights, kPrefix, at::kFloat), kPrefix);
    CHECK(forms_vs_reference(mixer, x, expected, "conv_size=3 norm_eps=1e-2 T=75") <= 1e-5);
    CHECK(max_rel_error(expected, plain) > 1e-3);
  }
  SECTION("num_k_heads != num_v_heads") {
    prime::reference::GdnDims dims = small_dims();
    dims.num_k_heads = 2;
    dims.num_v_heads = 1;
    std::mt19937_64 heads_rng(54);
    const prime::reference::Weights mixed = prime::reference::testing::random_gdn_weights(dims, heads_rng);
    GdnConfig config(32, 8, 4, 1);
    config.num_k_heads = 2;
    const at::Tensor expected = prime::reference::gdn_forward(dims, mixed, x64);
    GdnMixer mixer(config, with_prefix(mixed, kPrefix, at::kFloat), kPrefix);
    CHECK(forms_vs_reference(mixer, x, expected, "Hq=4 Hk=2 Hv=1 T=75") <= 1e-5);
  }
}

TEST_CASE("GDN with bf16 weights keeps fp32 states", "[gdn]") {
  SingleThreaded single_threaded;
  prime::reference::GdnDims dims;
  dims.hidden = 32;
  dims.head_dim = 8;
  dims.num_q_heads = 4;
  dims.num_kv_heads = 1;
  prime::reference::Weights weights = small_weights(61);
  GdnMixer mixer(GdnConfig(32, 8, 4, 1), with_prefix(weights, kPrefix, at::kBFloat16), kPrefix);
  const at::Tensor x64 = random_input(2, 70, 32, 62);
  const at::Tensor x = x64.to(at::kBFloat16);
  const at::Tensor chunked = mixer.forward(x, nullptr);
  CHECK(chunked.scalar_type() == at::kBFloat16);
  // Only the fp32 core differs between the forms; the bf16 output rounding is what remains.
  CHECK(report("GDN", "bf16 chunked-vs-recurrent", "B=2 T=70",
               max_rel_error(chunked, mixer.forward_recurrent(x, nullptr))) <= 1e-2);
  const at::Tensor expected = prime::reference::gdn_forward(dims, weights, x64);
  CHECK(report("GDN", "bf16 chunked-vs-reference(f64)", "B=2 T=70",
               max_rel_error(chunked, expected)) <= 5e-2);
  auto cache = mixer.make_cache(2, at::kCPU);
  mixer.forward(x.narrow(1, 0, 69), cache.get());
  mixer.forward(x.narrow(1, 69, 1), cache.get());
  const auto& state = dynamic_cast<const GdnCache&>(*cache);
  CHECK(state.state.scalar_type() == at::kFloat);
  CHECK(state.q_conv_state.scalar_type() == at::kFloat);
}

TEST_CASE("GDN forms agree on CUDA", "[gdn][gpu]") {
  if (!prime::test::gpu_available_or_fail()) return;
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  struct GpuCase { int64_t batch, length, hidden, head_dim, q_heads, kv_heads; };
  for (const GpuCase& c : {GpuCase{2, 130, 32, 16, 4, 1}, GpuCase{2, 700, 256, 64, 8, 2}}) {
    prime::reference::GdnDims dims;
    dims.hidden = c.hidden;
    dims.head_dim = c.head_dim;
    dims.num_q_heads = c.q_heads;
    dims.num_kv_heads = c.kv_heads;
    std::mt19937_64 rng(71);
    prime::reference::Weights weights = prime::reference::testing::random_gdn_weights(dims, rng);
    const std::string name = "cuda " + shape_name(c.batch, c.length, c.q_heads, c.kv_heads,
                                                  c.head_dim, c.hidden);
    const GdnConfig config(c.hidden, c.head_dim, c.q_heads, c.kv_heads);
    prime::model::TensorMap map = with_prefix(weights, kPrefix, at::kFloat);
    for (auto& [key, tensor] : map) tensor = tensor.to(at::kCUDA);
    GdnMixer mixer(config, map, kPrefix);
    const at::Tensor x64 = random_input(c.batch, c.length, c.hidden, 72);
    const at::Tensor x = x64.to(at::kFloat).to(at::kCUDA);
    const at::Tensor expected = prime::reference::gdn_forward(dims, weights, x64);
    CHECK(forms_vs_reference(mixer, x, expected, name) <= 1e-5);
    for (auto& [key, tensor] : map) tensor = tensor.to(at::kBFloat16);
    GdnMixer bf16(config, map, kPrefix);
    const at::Tensor xb = x.to(at::kBFloat16);
    CHECK(report("GDN", "bf16 chunked-vs-recurrent", name,
                 max_rel_error(bf16.forward(xb, nullptr), bf16.forward_recurrent(xb, nullptr))) <=
          1e-2);
  }
}
