// Mamba-2 mixer: mamba2_config parsing and refusals, the optional features (no conv bias, no
// B/C norm), bad weights, bf16 weights, and the CUDA path.
#include <catch2/catch.hpp>

#include "model/mamba2.h"
#include "reference/ssm_reference.h"
#include "test_helpers.h"
#include "test_ssm_mixer_util.h"
#include "util/error.h"

namespace {

using prime::UserError;
using prime::model::Mamba2Cache;
using prime::model::Mamba2Config;
using prime::model::Mamba2Mixer;
using namespace prime::testing;
using Catch::Matchers::Contains;

const std::string kPrefix = "model.layers.5.mamba.";

nlohmann::json formats_config() {  // the mamba2_config of design/formats.md for Qwen3-8B
  return nlohmann::json::parse(R"({"d_model": 4096, "d_inner": 4096, "d_xb": 1024,
      "intermediate_size": 12288, "hidden_act": "silu", "rms_norm_eps": 1e-6, "n_layer": 36,
      "ssm_cfg": {"expand": 1, "ngroups": 32, "d_state": 128},
      "use_qk_norm": true, "use_pos_emb": false})");
}

prime::reference::Weights small_weights(uint64_t seed) {
  prime::reference::Mamba2Dims dims;
  dims.hidden = 32;
  dims.head_dim = 8;
  dims.num_q_heads = 4;
  dims.num_kv_heads = 1;
  std::mt19937_64 rng(seed);
  return prime::reference::testing::random_mamba2_weights(dims, rng);
}

prime::reference::Mamba2Dims small_dims() {
  prime::reference::Mamba2Dims dims;
  dims.hidden = 32;
  dims.head_dim = 8;
  dims.num_q_heads = 4;
  dims.num_kv_heads = 1;
  return dims;
}

}  // namespace

TEST_CASE("Mamba-2 config parses mamba2_config and refuses what it cannot honour", "[mamba2]") {
  SingleThreaded single_threaded;
  const Mamba2Config config = Mamba2Config::from_json(formats_config(), "3");
  CHECK(config.hidden_size == 4096);
  CHECK(config.head_dim == 128);
  CHECK(config.num_q_heads == 32);
  CHECK(config.num_kv_heads == 8);
  CHECK(config.num_heads() == 32);
  CHECK(config.in_proj_rows() == 10272);  // design/ssm-layers.md, 8B
  CHECK(config.conv_channels() == 6144);
  CHECK(config.conv_bias);
  CHECK(config.use_qk_norm);
  CHECK(config.chunk_size == 256);

  auto refused = [](nlohmann::json sub, const std::string& option) {
    INFO(sub.dump());
    REQUIRE_THROWS_AS(Mamba2Config::from_json(sub, "model.layers.7.mamba."), UserError);
    REQUIRE_THROWS_WITH(Mamba2Config::from_json(sub, "model.layers.7.mamba."),
                        Contains("model.layers.7.mamba.") && Contains(option));
  };
  nlohmann::json sub = formats_config();
  sub["use_pos_emb"] = true;
  refused(sub, "use_pos_emb");
  sub = formats_config();
  sub["some_new_flag"] = 1;
  refused(sub, "some_new_flag");
  sub = formats_config();
  sub["ssm_cfg"]["ngroups"] = 8;
  refused(sub, "ngroups");
  sub = formats_config();
  sub["ssm_cfg"]["headdim"] = 64;
  refused(sub, "headdim");
  sub = formats_config();
  sub["ssm_cfg"]["bias"] = true;
  refused(sub, "bias");
  sub = formats_config();
  sub["ssm_cfg"]["D_has_hdim"] = true;
  refused(sub, "D_has_hdim");
  sub = formats_config();
  sub["ssm_cfg"]["norm_before_gate"] = true;
  refused(sub, "norm_before_gate");
  sub = formats_config();
  sub["ssm_cfg"]["dt_limit"] = nlohmann::json::array({0.0, 1.0});
  refused(sub, "dt_limit");
  sub = formats_config();
  sub["ssm_cfg"].erase("d_state");
  refused(sub, "d_state");
  sub = formats_config();
  sub["d_xb"] = 1000;  // not a multiple of d_state
  refused(sub, "d_xb");
  sub = formats_config();
  sub["d_xb"] = 3 * 128;  // 3 heads do not divide 32
  refused(sub, "d_xb");
  sub = formats_config();
  sub["d_model"] = "big";
  refused(sub, "d_model");

  // Accepted and honoured.
  sub = formats_config();
  sub["use_qk_norm"] = false;
  sub["ssm_cfg"]["conv_bias"] = false;
  sub["ssm_cfg"]["d_conv"] = 3;
  sub["ssm_cfg"]["headdim"] = 128;
  const Mamba2Config honoured = Mamba2Config::from_json(sub, "7");
  CHECK_FALSE(honoured.use_qk_norm);
  CHECK_FALSE(honoured.conv_bias);
  CHECK(honoured.conv_size == 3);
}

TEST_CASE("Mamba-2 bad weights name the layer and the tensor", "[mamba2]") {
  SingleThreaded single_threaded;
  const prime::reference::Weights weights = small_weights(41);
  const Mamba2Config config(32, 8, 4, 1);
  REQUIRE_NOTHROW(Mamba2Mixer(config, with_prefix(weights, kPrefix, at::kFloat), kPrefix));

  prime::reference::Weights wrong = weights;
  wrong["in_proj.weight"] = at::ones({80, 32}, at::kDouble);  // expected 2*32 + 2*8 + 4 = 84 rows
  REQUIRE_THROWS_AS(Mamba2Mixer(config, with_prefix(wrong, kPrefix, at::kFloat), kPrefix),
                    UserError);
  REQUIRE_THROWS_WITH(Mamba2Mixer(config, with_prefix(wrong, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.mamba.in_proj.weight") && Contains("[84, 32]"));
  wrong = weights;
  wrong["conv1d.weight"] = at::ones({48, 1, 3}, at::kDouble);
  REQUIRE_THROWS_WITH(Mamba2Mixer(config, with_prefix(wrong, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.mamba.conv1d.weight"));
  wrong = weights;
  wrong.erase("C_norm.weight");
  REQUIRE_THROWS_WITH(Mamba2Mixer(config, with_prefix(wrong, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.mamba.C_norm.weight"));
  wrong = weights;
  wrong["D"] = at::ones({4, 8}, at::kDouble);
  REQUIRE_THROWS_WITH(Mamba2Mixer(config, with_prefix(wrong, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.mamba.D"));
  Mamba2Config bad_heads(32, 8, 4, 3);
  REQUIRE_THROWS_WITH(Mamba2Mixer(bad_heads, with_prefix(weights, kPrefix, at::kFloat), kPrefix),
                      Contains("model.layers.5.mamba."));
}

TEST_CASE("Mamba-2 options against the float64 reference", "[mamba2]") {
  SingleThreaded single_threaded;
  prime::reference::Weights weights = small_weights(51);
  const at::Tensor x64 = random_input(2, 75, 32, 52);
  const at::Tensor x = x64.to(at::kFloat);
  const at::Tensor plain = prime::reference::mamba2_forward(small_dims(), weights, x64);

  SECTION("conv_bias false") {
    Mamba2Config config(32, 8, 4, 1);
    config.conv_bias = false;
    config.chunk_size = 32;
    prime::reference::Weights no_bias = weights;
    no_bias.erase("conv1d.bias");
    prime::reference::Mamba2Dims dims = small_dims();
    dims.conv_bias = false;
    const at::Tensor expected = prime::reference::mamba2_forward(dims, no_bias, x64);
    Mamba2Mixer mixer(config, with_prefix(no_bias, kPrefix, at::kFloat), kPrefix);
    CHECK(forms_vs_reference(mixer, x, expected, "no_conv_bias T=75 chunk=32") <= 1e-5);
    CHECK(max_rel_error(expected, plain) > 1e-3);
  }
  SECTION("use_qk_norm false") {
    Mamba2Config config(32, 8, 4, 1);
    config.use_qk_norm = false;
    prime::reference::Weights no_norm = weights;
    no_norm.erase("B_norm.weight");
    no_norm.erase("C_norm.weight");
    prime::reference::Mamba2Dims dims = small_dims();
    dims.use_qk_norm = false;
    const at::Tensor expected = prime::reference::mamba2_forward(dims, no_norm, x64);
    Mamba2Mixer mixer(config, with_prefix(no_norm, kPrefix, at::kFloat), kPrefix);
    CHECK(forms_vs_reference(mixer, x, expected, "no_qk_norm T=75") <= 1e-5);
    CHECK(max_rel_error(expected, plain) > 1e-3);
  }
  SECTION("d_conv 3") {
    Mamba2Config config(32, 8, 4, 1);
    config.conv_size = 3;
    std::mt19937_64 rng(53);
    weights["conv1d.weight"] = prime::reference::testing::random_normal({48, 1, 3}, 0.5, rng);
    const at::Tensor expected = prime::reference::mamba2_forward(small_dims(), weights, x64);
    Mamba2Mixer mixer(config, with_prefix(weights, kPrefix, at::kFloat), kPrefix);
    CHECK(forms_vs_reference(mixer, x, expected, "d_conv=3 T=75") <= 1e-5);
    CHECK(max_rel_error(expected, plain) > 1e-3);
  }
}

TEST_CASE("Mamba-2 with bf16 weights keeps fp32 states", "[mamba2]") {
  SingleThreaded single_threaded;
  prime::reference::Mamba2Dims dims;
  dims.hidden = 32;
  dims.head_dim = 8;
  dims.num_q_heads = 4;
  dims.num_kv_heads = 1;
  const prime::reference::Weights weights = small_weights(61);
  Mamba2Mixer mixer(Mamba2Config(32, 8, 4, 1), with_prefix(weights, kPrefix, at::kBFloat16),
                    kPrefix);
  const at::Tensor x64 = random_input(2, 70, 32, 62);
  const at::Tensor x = x64.to(at::kBFloat16);
  const at::Tensor chunked = mixer.forward(x, nullptr);
  CHECK(chunked.scalar_type() == at::kBFloat16);
  CHECK(report("M2", "bf16 chunked-vs-recurrent", "B=2 T=70",
               max_rel_error(chunked, mixer.forward_recurrent(x, nullptr))) <= 1e-2);
  const at::Tensor expected = prime::reference::mamba2_forward(dims, weights, x64);
  CHECK(report("M2", "bf16 chunked-vs-reference(f64)", "B=2 T=70",
               max_rel_error(chunked, expected)) <= 5e-2);
  auto cache = mixer.make_cache(2, at::kCPU);
  mixer.forward(x.narrow(1, 0, 69), cache.get());
  mixer.forward(x.narrow(1, 69, 1), cache.get());
  const auto& state = dynamic_cast<const Mamba2Cache&>(*cache);
  CHECK(state.state.scalar_type() == at::kFloat);
  CHECK(state.conv_state.scalar_type() == at::kFloat);
}

TEST_CASE("Mamba-2 forms agree on CUDA", "[mamba2][gpu]") {
  if (!prime::test::gpu_available_or_fail()) return;
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  struct GpuCase { int64_t batch, length, hidden, head_dim, q_heads, kv_heads; };
  for (const GpuCase& c : {GpuCase{2, 300, 32, 16, 4, 1}, GpuCase{2, 700, 256, 64, 8, 2}}) {
    prime::reference::Mamba2Dims dims;
    dims.hidden = c.hidden;
    dims.head_dim = c.head_dim;
    dims.num_q_heads = c.q_heads;
    dims.num_kv_heads = c.kv_heads;
    std::mt19937_64 rng(71);
    const prime::reference::Weights weights =
        prime::reference::testing::random_mamba2_weights(dims, rng);
    const std::string name = "cuda " + shape_name(c.batch, c.length, c.q_heads, c.kv_heads,
                                                  c.head_dim, c.hidden);
    const Mamba2Config config(c.hidden, c.head_dim, c.q_heads, c.kv_heads);
    prime::model::TensorMap map = with_prefix(weights, kPrefix, at::kFloat);
    for (auto& [key, tensor] : map) tensor = tensor.to(at::kCUDA);
    Mamba2Mixer mixer(config, map, kPrefix);
    const at::Tensor x64 = random_input(c.batch, c.length, c.hidden, 72);
    const at::Tensor x = x64.to(at::kFloat).to(at::kCUDA);
    const at::Tensor expected = prime::reference::mamba2_forward(dims, weights, x64);
    CHECK(forms_vs_reference(mixer, x, expected, name) <= 1e-5);
    for (auto& [key, tensor] : map) tensor = tensor.to(at::kBFloat16);
    Mamba2Mixer bf16(config, map, kPrefix);
    const at::Tensor xb = x.to(at::kBFloat16);
    CHECK(report("M2", "bf16 chunked-vs-recurrent", name,
                 max_rel_error(bf16.forward(xb, nullptr), bf16.forward_recurrent(xb, nullptr))) <=
          1e-2);
  }
}
