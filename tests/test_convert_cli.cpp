// prime-convert as a user runs it: dry run, a real run, and every bad input (exit 1, a clear
// message, nothing written). Also the convert benchmark's machinery on a tiny source.
#include <catch2/catch.hpp>

#include <sys/resource.h>
#include <sys/wait.h>

#include <array>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "convert/convert_bench.h"
#include "model/load_model.h"
#include "test_convert_util.h"
#include "util/error.h"

using namespace prime;
using Catch::Matchers::Contains;

namespace {

const std::string tiny = "'" + test::tiny_synthetic(4) + "'";

}  // namespace

TEST_CASE("prime-convert --dry-run prints the plan and writes nothing, a real run writes", "[convert][cli]") {
  test::ConvertTempDir dir("cli");
  const std::string out = (dir / "out").string();
  auto result = prime::test::run_cli("prime-convert --source " + tiny + " --layer GKA --ratio 1:3 --out " + out + " --dry-run");
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("dry run: nothing is written"));
  CHECK_THAT(result.output, Contains("pattern   GKA-GKA-*-GKA"));
  CHECK_THAT(result.output, Contains("; ratio 1:3 (n_attn = round(4*1/4) = 1), placed uniform"));
  const auto by_pattern = prime::test::run_cli("prime-convert --source " + tiny + " --pattern '*-GKA-M2-SWA' --out " +
                                               out + " --dry-run");
  CHECK(by_pattern.exit_code == 0);
  CHECK_THAT(by_pattern.output, Contains("1 attention + 1 GKA + 1 M2 + 1 SWA; by --pattern"));
  CHECK_THAT(result.output, Contains("gka.g_proj.weight"));
  CHECK_THAT(result.output, Contains("estimated peak memory"));
  CHECK_FALSE(std::filesystem::exists(out));

  result = prime::test::run_cli("prime-convert --source " + tiny + " --layer GDN --ratio 1:1 --placement middle --out " + out);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("wrote " + out));
  CHECK(std::filesystem::exists(dir / "out" / "model.safetensors"));
  const auto provenance = nlohmann::json::parse(test::read_text(dir / "out" / "prime.json"));
  CHECK(provenance["plan"]["pattern"] == "GDN-*-*-GDN");
  CHECK_THAT(provenance["command"].get<std::string>(), Contains("--layer GDN --ratio 1:1 --placement middle"));
  CHECK(model::load_model(out, {at::kCPU, at::kFloat}).model->num_layers() == 4);

  // Existing output: refused without --force, replaced with it.
  result = prime::test::run_cli("prime-convert --source " + tiny + " --layer GDN --ratio 1:1 --out " + out);
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("already exists"));
  result = prime::test::run_cli("prime-convert --source " + tiny + " --layer M2 --ratio 1:1 --out " + out + " --force --quiet");
  CHECK(result.exit_code == 0);
  CHECK(nlohmann::json::parse(test::read_text(dir / "out" / "config.json")).contains("mamba2_config"));
}

TEST_CASE("prime-convert refuses bad input with exit 1, a clear message and nothing written", "[convert][cli][bad-input]") {
  test::ConvertTempDir dir("cli_bad");
  const std::string out = (dir / "out").string();
  std::ofstream(dir / "scores.csv") << "layer,score\n0,1\n1,2\n";
  std::filesystem::create_directories(dir / "gpt2");
  std::ofstream(dir / "gpt2" / "config.json") << R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})";
  const std::string qwen3 = test::parity_fixture("qwen3").string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--source " + tiny + " --layer LSTM --ratio 1:3", "unknown --layer 'LSTM'"},
      {"--source " + tiny + " --layer GKA --ratio 1-3", "--ratio '1-3' is malformed"},
      {"--source " + qwen3 + " --layer GKA --ratio 3:1", "cannot be met with 2 layers"},
      {"--source " + tiny + " --layer GKA --keep-attention 1,4", "layer 4 is out of range"},
      {"--source " + tiny + " --layer GKA --keep-attention 1,1", "layer 1 is listed twice"},
      {"--source " + tiny + " --pattern '*-GKA-GKA'", "--pattern has 3 layers but the source has 4"},
      {"--source " + tiny + " --layer GKA --ratio 1:1 --scores " + (dir / "scores.csv").string(), "no score for layer(s) 2,3"},
      {"--source " + (dir / "gpt2").string() + " --layer GKA --ratio 1:3", "unknown architecture"},
      {"--source /nonexistent/model --layer GKA --ratio 1:3", "neither a directory nor a known model alias"},
      {"--source " + tiny + " --layer GKA --ratio 1:3 --init xavier", "unknown --init 'xavier'"},
      {"--source " + tiny + " --layer GKA --ratio 1:3 --dtype int8", "int8"},
      {"--source " + tiny + " --layer GKA", "--ratio A:S is required"},
  };
  for (const auto& [args, message] : cases) {
    const auto result = prime::test::run_cli("prime-convert " + args + " --out " + out);
    INFO(args << "\n" << result.output);
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.output, Contains(message));
    CHECK_FALSE(std::filesystem::exists(out));
  }
  // Missing required flags are CLI11's (exit code != 0), still nothing written.
  CHECK(prime::test::run_cli("prime-convert --layer GKA --ratio 1:3 --out " + out).exit_code != 0);
  CHECK(prime::test::run_cli("prime-convert --source " + tiny + " --layer GKA --ratio 1:3").exit_code == 1);
  CHECK_FALSE(std::filesystem::exists(out));
}

TEST_CASE("prime-convert: a write error (file size limit, like ENOSPC) removes the partial output", "[convert][bad-input]") {
  test::ConvertTempDir dir("efbig");
  struct rlimit saved {};
  REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
  const auto previous = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limited = saved;
  limited.rlim_cur = 64 << 10;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &limited) == 0);
  std::string message;
  try {
    test::convert_quietly(test::pattern_options(test::parity_fixture("qwen3").string(), "GKA-*", dir / "out"));
  } catch (const UserError& error) {
    message = error.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous);
  CHECK_THAT(message, Contains(std::strerror(EFBIG)) && Contains("has been removed"));
  CHECK_FALSE(std::filesystem::exists(dir / "out"));
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    CHECK(entry.path().filename().string().find(".tmp-") == std::string::npos);
}

TEST_CASE("convert benchmark: materialises once, times cp and the conversion, measures peak RSS", "[convert][bench]") {
  test::ConvertTempDir dir("bench");
  convert::ConvertBenchOptions options;
  options.source = test::tiny_synthetic(4);
  options.work_dir = dir.path();
  options.rounds = 2;
  std::ostringstream log;
  auto result = convert::run_convert_bench(options, log);
  CHECK_FALSE(result.cached);
  CHECK(result.source_files == 3);  // model.safetensors, config.json, the cache marker
  REQUIRE(result.copy_seconds.size() == 2);
  REQUIRE(result.convert_seconds.size() == 2);
  CHECK(result.copy_seconds[1] > 0);
  CHECK(result.convert_seconds[1] > 0);
  CHECK(result.output_bytes > result.source_bytes / 2);
  CHECK(result.peak_rss_bytes > 0);
  const std::string table = convert::format_convert_bench(result, options);
  CHECK_THAT(table, Contains("cp -r --reflink=never + fsync"));
  CHECK_THAT(table, Contains("peak RSS of the conversions"));
  options.rounds = 1;
  result = convert::run_convert_bench(options, log);
  CHECK(result.cached);
  CHECK(result.convert_seconds.size() == 1);
  CHECK_FALSE(std::filesystem::exists(dir / "convert-out"));
  CHECK_FALSE(std::filesystem::exists(dir / "copy-out"));
  options.source = "qwen3-8b";
  CHECK_THROWS_WITH(convert::run_convert_bench(options, log), Contains("needs a synthetic:ALIAS source"));
}
