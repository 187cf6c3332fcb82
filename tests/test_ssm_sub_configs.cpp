// Layer sub-configs as a loader reads them (gka_config, gdn_config, mamba2_config, swa_config):
// structural fields derived from the base config when absent and refused, naming both values,
// when they disagree with it; strict typed reads whose errors are UserErrors naming the key.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include "io/model_config.h"
#include "model/hybrid_model.h"
#include "test_helpers.h"
#include "test_hybrid_util.h"
#include "util/error.h"

using namespace prime;
using test::Built;
using test::build_hybrid;
using Catch::Matchers::Contains;

namespace {

const std::vector<std::string> kPattern = {"GKA", "GDN", "M2", "SWA"};

// The model built from `built` with its config.json replaced by `raw`.
model::HybridModel load(const Built& built, const nlohmann::json& raw) {
  return model::HybridModel(io::ModelConfig::from_json(raw, "test hybrid"),
                            model::prepare_weights(built.weights, {}));
}

// Loading `raw` is refused with a UserError whose message holds every one of `parts`.
void check_refused(const Built& built, const nlohmann::json& raw,
                   const std::vector<std::string>& parts) {
  INFO(raw.dump());
  try {
    load(built, raw);
    FAIL("loaded without error");
  } catch (const UserError& error) {
    const std::string message = error.what();
    INFO(message);
    for (const std::string& part : parts) CHECK(message.find(part) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("sub-configs: absent structural fields are derived from the base config", "[ssm][hybrid]") {
  at::NoGradGuard no_grad;
  const Built built = build_hybrid(kPattern);
  nlohmann::json raw = built.config.raw;
  const at::Tensor ids = at::randint(0, 97, {1, 9}, at::kLong);
  const at::Tensor expected = load(built, raw).forward(ids);
  // Only user options left, as a reference-implementation checkpoint may have them.
  for (const char* key : {"hidden_size", "head_dim", "num_q_heads", "num_k_heads", "num_v_heads"}) {
    raw["gka_config"].erase(key);
    raw["gdn_config"].erase(key);
  }
  for (const char* key : {"d_model", "d_inner", "d_xb"}) raw["mamba2_config"].erase(key);
  raw["mamba2_config"]["ssm_cfg"] = nlohmann::json::object();
  CHECK(raw["gka_config"] == nlohmann::json{{"num_iter", 30}});
  CHECK(raw["gdn_config"].empty());
  const at::Tensor derived = load(built, raw).forward(ids);
  CHECK(test::relative_error(derived, expected) == 0.0);
}

TEST_CASE("sub-configs: a structural field that disagrees with the base config is refused", "[ssm][hybrid]") {
  const Built built = build_hybrid(kPattern);
  struct Case {
    const char* sub_config;
    nlohmann::json::json_pointer field;
    nlohmann::json value;
    std::vector<std::string> parts;  // the key, the value given, the base config's value
  };
  const std::vector<Case> cases = {
      {"gka_config", "/hidden_size"_json_pointer, 32, {"gka_config", "hidden_size", "32", "64"}},
      {"gka_config", "/num_k_heads"_json_pointer, 4, {"gka_config", "num_k_heads", "= 4", "= 2"}},
      {"gdn_config", "/head_dim"_json_pointer, 8, {"gdn_config", "head_dim", "= 8", "= 16"}},
      {"gdn_config", "/num_q_heads"_json_pointer, 2, {"gdn_config", "num_q_heads", "= 2", "= 4"}},
      {"mamba2_config", "/d_inner"_json_pointer, 32, {"mamba2_config", "d_inner", "32", "64"}},
      {"mamba2_config", "/d_model"_json_pointer, 128, {"mamba2_config", "d_model", "128", "64"}},
      {"mamba2_config", "/ssm_cfg/d_state"_json_pointer, 8, {"ssm_cfg", "d_state", "= 8", "= 16"}},
      {"mamba2_config", "/n_layer"_json_pointer, 36, {"mamba2_config", "n_layer", "36", "= 4"}},
      {"mamba2_config", "/hidden_act"_json_pointer, "gelu", {"hidden_act", "gelu", "silu"}},
  };
  for (const Case& c : cases) {
    nlohmann::json raw = built.config.raw;
    raw[c.sub_config][c.field] = c.value;
    check_refused(built, raw, c.parts);
  }
}

TEST_CASE("sub-configs: bad types and unknown keys are UserErrors naming the key", "[ssm][hybrid]") {
  const Built built = build_hybrid(kPattern);
  struct Case {
    const char* sub_config;
    const char* key;
    nlohmann::json value;
  };
  const std::vector<Case> cases = {
      {"gka_config", "use_gate", "yes"},
      {"gka_config", "num_iter", 2.5},
      {"gka_config", "hidden_size", "64"},
      {"gka_config", "solver_type", 3},
      {"gdn_config", "norm_eps", "small"},
      {"gdn_config", "num_k_heads", nlohmann::json::array({2})},
      {"gdn_config", "mode", 1},
      {"gdn_config", "kv_learnable_residual", true},
      {"mamba2_config", "use_qk_norm", 1},
      {"mamba2_config", "rms_norm_eps", "tiny"},
      {"mamba2_config", "ssm_cfg", 7},
      {"swa_config", "window_size", 6.5},
      {"swa_config", "window_size", "6"},
      {"swa_config", "window_size", 0},
      {"swa_config", "num_sink_tokens", false},
      {"swa_config", "window", 6},
  };
  for (const Case& c : cases) {
    nlohmann::json raw = built.config.raw;
    raw[c.sub_config][c.key] = c.value;
    check_refused(built, raw, {c.sub_config, c.key});
  }
  nlohmann::json raw = built.config.raw;
  raw["swa_config"] = "window 6";
  check_refused(built, raw, {"swa_config", "JSON object"});
}
