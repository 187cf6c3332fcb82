// The command-line contract every prime-<verb> keeps: parse errors exit 1 naming the flag,
// --version everywhere, interrupted runs leave nothing, one source validation for all commands,
// --force alike for files and directories, outputs for scripts (--json).
#include <catch2/catch.hpp>

#include <CLI/CLI.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/eval_run.h"
#include "io/atomic_dir.h"
#include "io/safetensors.h"
#include "test_helpers.h"
#include "util/cli.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

const std::string tiny = "synthetic:qwen3-0.6b@layers=2,hidden=64,heads=4,kv_heads=2,head_dim=16,intermediate=96,vocab=300";

class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("prime_contract_" + name + "_" + std::to_string(::getpid()))) {
    prime::io::remove_tree(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { prime::io::remove_tree(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A copy of a parity fixture checkpoint (config.json + model.safetensors) whose config can be edited.
fs::path copy_fixture(const TempDir& dir, const std::string& name, const std::string& fixture = "qwen3") {
  const fs::path from = prime::test::fixtures_dir() / "parity" / fixture, to = dir.path() / name;
  fs::create_directories(to);
  for (const char* file : {"config.json", "model.safetensors"}) fs::copy_file(from / file, to / file);
  return to;
}

void edit_config(const fs::path& dir, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  edit(config);
  std::ofstream(dir / "config.json") << config.dump(2);
}

std::vector<std::string> hidden_entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().rfind(".", 0) == 0) names.push_back(entry.path().filename().string());
  return names;
}

}  // namespace

TEST_CASE("CLI11's parse errors are put in the commands' words and other messages pass through", "[cli][contract]") {
  using prime::describe_parse_error;
  CHECK(describe_parse_error("Could not convert: --steps = 1.5") == "--steps: '1.5' is not a whole number in range");
  CHECK(describe_parse_error("Could not convert: --steps = 1e30") == "--steps: '1e30' is not a whole number in range");
  CHECK(describe_parse_error("Could not convert: --lr = abc") == "--lr: 'abc' is not a number");
  CHECK(describe_parse_error("Could not convert: --lr = ") == "--lr: '' is not a number");
  CHECK(describe_parse_error("--lr: At Most 1 required but received 2") == "--lr was given 2 times; give it once");
  CHECK(describe_parse_error("--dtype: 1 required TEXT missing") == "--dtype needs a value");
  CHECK(describe_parse_error("--pair: 2 required INT missing") == "--pair needs 2 values");
  CHECK(describe_parse_error("--model: At least 1 required but received 0") == "--model needs at least 1 values, not 0");
  CHECK(describe_parse_error("Expected exactly 2 arguments to --pair, got 3") == "--pair takes 2 values, not 3");
  CHECK(describe_parse_error("--force: too many inputs for a flag") == "--force is a switch: give it alone, without a value");
  CHECK(describe_parse_error("--force: Should be true/false or a number") ==
        "--force is a switch: give it alone, without a value");
  CHECK(describe_parse_error("The value xyz is not an allowed value for --mode") == "--mode: 'xyz' is not an allowed value");
  CHECK(describe_parse_error("--source is required") == "--source is required");
  CHECK(describe_parse_error("--context: foo not in {prefill,synthetic}") ==
        "--context: 'foo' is not one of prefill, synthetic");
  CHECK(describe_parse_error("inputs is required") == "missing inputs (a positional argument)");
  CHECK(describe_parse_error("--tokens: must be a finite number > 0, not '0'") == "--tokens: must be a finite number > 0, not '0'");
}

TEST_CASE("parse_command_line refuses whole numbers outside their flag's type, keeps the rest", "[cli][contract]") {
  const auto parse = [](std::vector<std::string> args, int64_t& wide, size_t& count, std::vector<int64_t>& list) {
    CLI::App app;
    app.add_option("--wide", wide);
    app.add_option("--count", count);
    app.add_option("--list", list);
    args.insert(args.begin(), "prime-test");
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    return prime::parse_command_line(app, "prime-test", static_cast<int>(argv.size()), argv.data());
  };
  int64_t wide = 0;
  size_t count = 0;
  std::vector<int64_t> list;
  CHECK_FALSE(parse({"--wide", "-9223372036854775808", "--count", "18446744073709551615", "--list", "1", "2"}, wide,
                    count, list));
  CHECK(wide == INT64_MIN);
  CHECK(count == UINT64_MAX);
  CHECK(list == std::vector<int64_t>{1, 2});
  // Without the check CLI11 reads the first as INT64_MAX, the second as UINT64_MAX.
  for (const auto& args : std::vector<std::vector<std::string>>{{"--wide", "9223372036854775808"},
                                                               {"--wide", "-99999999999999999999"},
                                                               {"--count", "-1"},
                                                               {"--count", "18446744073709551616"},
                                                               {"--list", "3", "99999999999999999999"}}) {
    INFO(args[0] << " " << args[1]);
    CHECK(parse(args, wide, count, list) == std::optional<int>(1));
  }
}

TEST_CASE("every command: a malformed value, a repeated flag and a missing value are named in plain words",
          "[cli][contract]") {
  for (const auto& [command, expected] : std::vector<std::pair<std::string, std::string>>{
           {"prime-bench ssm --tokens 1.5", "--tokens: '1.5' is not a whole number in range"},
           {"prime-bench ssm --tokens 5 --tokens 6", "--tokens was given 2 times; give it once"},
           // A 64-bit flag's value beyond its range (CLI11 took it as the largest value: an internal
           // error, exit 2, when the tensors were sized) and an unsigned flag's negative value.
           {"prime-bench ssm --tokens 99999999999999999999", "--tokens: '99999999999999999999' is not a whole number in range"},
           {"prime-train --seed -1", "--seed: must be a finite number >= 0, not '-1'"},
           {"prime-bench kernels --dtype", "--dtype needs a value"},
           {"prime-bench decode --model '" + tiny + "' --max-batch-tokens abc", "--max-batch-tokens: 'abc' is not a number"},
           {"prime-eval --model '" + tiny + "' --ctx abc", "--ctx: must be a finite number > 0, not 'abc'"},
           // An on/off flag given twice, like an option given twice.
           {"prime-inspect --json --json '" + tiny + "'", "--json was given 2 times; give it once"},
           {"prime-convert --source '" + tiny + "' --layer GDN --ratio 1:1 --dry-run --dry-run",
            "--dry-run was given 2 times; give it once"},
           // A missing subcommand lists them; a value outside a set lists the set; a missing
           // positional argument says it is one.
           {"prime-data", "a subcommand is required: tokenize, pack, inspect"},
           {"prime-bench decode --model '" + tiny + "' --context foo", "--context: 'foo' is not one of prefill, synthetic"},
           {"prime-data pack", "missing inputs (a positional argument)"},
           // Numbers a command cannot use are refused before it runs, naming the flag.
           {"prime-train --lr -1", "--lr: must be a finite number > 0, not '-1'"},
           {"prime-train --grad-clip -1", "--grad-clip: must be a finite number >= 0, not '-1'"},
           {"prime-train --keep 0", "--keep: must be a finite number > 0, not '0'"},
           {"prime-eval --model '" + tiny + "' --batch 0", "--batch: must be a finite number > 0, not '0'"},
           {"prime-bench decode --model '" + tiny + "' --batch 0", "--batch: must be a finite number > 0, not '0'"},
           {"prime-search --heartbeat -1", "--heartbeat: must be a finite number > 0, not '-1'"},
           // A cache no machine holds is refused before it is allocated (it was an allocator crash, exit 2).
           {"prime-eval --model '" + tiny + "' --generate 1000000000000000", "lower --generate"}}) {
    const auto result = prime::test::run_cli(command);
    INFO(command << ": " << result.output);
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.output, Contains(expected));
    CHECK_THAT(result.output, !Contains("Could not convert") && !Contains("required but received") &&
                                  !Contains("required TEXT missing"));
  }
  // Messages name the flag as the command spells it.
  for (const auto& [command, expected] : std::vector<std::pair<std::string, std::string>>{
           {"prime-convert --source '" + tiny + "' --layer GKA --ratio 1:1 --select attention-locality --dry-run",
            "--select-data SHARD is required by scorer attention-locality"},
           {"prime-select --source '" + tiny + "' --scorer attention-locality --ratios 1:x", "--ratios '1:x' is malformed"},
           {"prime-select --source '" + tiny + "' --scorer attention-locality --ratios ''", "--ratios is empty"},
           {"prime-bench ssm --dtype bf16 --tokens 64 --types GDN", "--dtype bf16: the SSM cores compute in fp32 or fp64"},
           {"prime-select --source '" + tiny + "' --scorer uniform --store /nonexistent-dir/scores.db",
            "directory /nonexistent-dir does not exist"},
           {"prime-train --stage pt --model '" + tiny + "' --data none.tok --out none --tokens 64K --batch-tokens 8K "
            "--seq-len 256 --dtype fp64",
            "--dtype fp64: prime-train takes fp32 or bf16"}}) {
    const auto result = prime::test::run_cli(command);
    INFO(command << ": " << result.output);
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.output, Contains(expected));
    CHECK_THAT(result.output, !Contains("higher = safer to replace"));  // refused before any scoring
  }
}

TEST_CASE("every command: parse errors exit 1 naming the flag, --version exits 0", "[cli][contract]") {
  for (const char* command : {"prime-eval", "prime-inspect", "prime-convert", "prime-data", "prime-bench"}) {
    auto result = prime::test::run_cli(std::string(command) + " --version");
    INFO(command << ": " << result.output);
    CHECK(result.exit_code == 0);
    CHECK_THAT(result.output, Contains(std::string(command) + " " + PRIME_VERSION));
    result = prime::test::run_cli(std::string(command) + " --no-such-flag");
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.output, Contains("--no-such-flag"));
  }
  // An unknown flag is named even though a required option is missing too.
  auto result = prime::test::run_cli("prime-convert --sorce x --layer GDN");
  INFO(result.output);
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("unknown option --sorce"));
  result = prime::test::run_cli("prime-convert --layer GDN");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--source is required"));
  result = prime::test::run_cli("prime-eval --model '" + tiny + "' --ctx abc");  // malformed value
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--ctx"));
  // A negative seed or id is no unsigned value wrapped around: refused, naming the flag.
  for (const std::string& command : std::vector<std::string>{
           "prime-convert --source '" + tiny + "' --layer GDN --ratio 1:1 --dry-run --seed -3",
           "prime-eval --model '" + tiny + "' --recall --seed -1",
           "prime-data tokenize --tokenizer-preset gpt2 --eos-id -5 x.txt --out x.tok"}) {
    result = prime::test::run_cli(command);
    INFO(command << ": " << result.output);
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.output, Contains("must be a finite number >= 0"));
  }
  result = prime::test::run_cli("prime-eval --model '" + tiny + "' --generate");  // missing value
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--generate"));
  result = prime::test::run_cli("prime-inspect " + tiny + " extra");  // extra argument
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("unexpected argument extra"));
  result = prime::test::run_cli("prime-eval --help");
  CHECK(result.exit_code == 0);
}

TEST_CASE("prime-eval --dump-logits holds the transformers logits of the parity fixture", "[cli][contract][parity]") {
  TempDir dir("dump");
  const fs::path fixture = prime::test::fixtures_dir() / "parity" / "qwen3";
  auto reference = prime::io::SafetensorsFile::open(fixture / "reference.safetensors");
  const at::Tensor ids = reference->tensor("input_ids").to(at::kLong), expected = reference->tensor("logits");
  std::string id_list;
  for (int64_t i = 0; i < ids.size(0); ++i) id_list += (i ? "," : "") + std::to_string(ids[i].item<int64_t>());
  auto result = prime::test::run_cli("prime-eval --model " + fixture.string() + " --device cpu --token-ids " +
                                     id_list + " --dump-logits " + (dir / "logits.safetensors"));
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  const at::Tensor dumped = prime::io::SafetensorsFile::open(dir / "logits.safetensors")->tensor("logits");
  REQUIRE(dumped.sizes() == expected.sizes());
  CHECK(prime::test::relative_error(dumped, expected) <= 1e-4);
  // A different prompt gives different logits: the check above can fail.
  CHECK(prime::test::relative_error(dumped.narrow(0, 0, 3), expected.narrow(0, 1, 3)) > 1e-2);
}

TEST_CASE("prime-eval: --force means the same for files, existing --dump-logits / --json refused without it", "[cli][contract]") {
  TempDir dir("force");
  const std::string out = dir / "logits.safetensors";
  std::ofstream(out) << "keep me";
  auto result = prime::test::run_cli("prime-eval --model '" + tiny + "' --token-ids 1,2 --dump-logits " + out);
  INFO(result.output);
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--dump-logits " + out + " already exists"));
  CHECK(fs::file_size(out) == 7);
  result = prime::test::run_cli("prime-eval --model '" + tiny + "' --token-ids 1,2 --dump-logits " + out + " --force");
  CHECK(result.exit_code == 0);
  CHECK(prime::io::SafetensorsFile::open(out)->tensor("logits").size(0) == 2);
  result = prime::test::run_cli("prime-eval --model '" + tiny + "' --json " + out + " --recall --trials 1");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--json " + out + " already exists"));
}

TEST_CASE("one validation of a source: every command refuses what one refuses", "[cli][contract]") {
  TempDir dir("validate");
  const fs::path partial = copy_fixture(dir, "partial");
  edit_config(partial, [](nlohmann::json& config) { config["partial_rotary_factor"] = 0.5; });
  const fs::path mismatch = copy_fixture(dir, "mismatch");
  edit_config(mismatch, [](nlohmann::json& config) { config["intermediate_size"] = 100; });
  for (const auto& [source, message] : {std::pair{partial, std::string("partial_rotary_factor")},
                                        std::pair{mismatch, std::string("but config.json implies")}}) {
    for (const std::string command :
         {"prime-inspect " + source.string(), "prime-eval --model " + source.string() + " --device cpu",
          "prime-convert --source " + source.string() + " --layer GDN --ratio 1:1 --out " + (dir / "out")}) {
      const auto result = prime::test::run_cli(command);
      INFO(command << "\n" << result.output);
      CHECK(result.exit_code == 1);
      CHECK_THAT(result.output, Contains(message));
    }
  }
  CHECK_FALSE(fs::exists(dir / "out"));
  // An all-attention --pattern, --ratio A:0 and --keep-attention of every layer mean the same plan.
  for (const std::string layers : {"--pattern '*-*'", "--layer GDN --ratio 1:0", "--layer GDN --keep-attention 0,1"}) {
    auto result = prime::test::run_cli("prime-convert --source '" + tiny + "' " + layers + " --dry-run --json");
    INFO(layers << "\n" << result.output);
    REQUIRE(result.exit_code == 0);
    CHECK(nlohmann::json::parse(result.output)["plan"]["pattern"] == "*-*");
  }
  // --out equal to the source (or holding it) never deletes it, --force or not.
  const fs::path source = copy_fixture(dir, "source");
  for (const std::string out : {source.string(), dir.path().string()}) {
    auto result = prime::test::run_cli("prime-convert --source " + source.string() + " --layer GDN --ratio 1:1 --force --out " + out);
    INFO(result.output);
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.output, Contains("refusing to write over the source"));
    CHECK(fs::exists(source / "model.safetensors"));
  }
}

TEST_CASE("synthetic sources have one dtype everywhere: their config's torch_dtype", "[cli][contract]") {
  auto result = prime::test::run_cli("prime-inspect --json --tensors '" + tiny + "'");
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  const auto report = nlohmann::json::parse(result.output);
  CHECK(report["tensors"][0]["dtype"] == "BF16");
  CHECK(report["bytes"].get<uint64_t>() == 2 * report["parameters"].get<uint64_t>());
  TempDir dir("dtype");
  result = prime::test::run_cli("prime-eval --model '" + tiny + "' --recall --trials 1 --needle-lengths 16 "
                                "--mqar-lengths 16 --mqar-pairs 2 --json " + (dir / "eval.json"));
  CHECK(result.exit_code == 0);
  CHECK(nlohmann::json::parse(std::ifstream(dir / "eval.json"))["dtype"] == "bf16");
  result = prime::test::run_cli("prime-convert --source '" + tiny + "' --layer SWA --ratio 1:1 --dry-run --json");
  REQUIRE(result.exit_code == 0);
  const auto plan = nlohmann::json::parse(result.output);
  CHECK(plan["config"]["torch_dtype"] == "bfloat16");
  CHECK(plan["plan"]["pattern"].is_string());
}

TEST_CASE("prime-eval checks memory before loading and warns past max_position_embeddings", "[cli][contract]") {
  auto result = prime::test::run_cli("prime-eval --model synthetic:qwen3-8b@layers=4000 --device cpu --dtype fp32");
  INFO(result.output);
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("needs about"));
  CHECK_THAT(result.output, Contains("--dtype bf16"));
  result = prime::test::run_cli("prime-eval --model '" + tiny + ",max_positions=6' --token-ids 1,2,3 --generate 5");
  CHECK(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("past max_position_embeddings 6"));
}

TEST_CASE("prime-eval checks the perplexity windows' logits against memory before loading", "[cli][contract]") {
  CHECK_NOTHROW(prime::eval::check_logits_fit(151936, 1024, 1, at::kCPU));
  CHECK_NOTHROW(prime::eval::check_logits_fit(151936, 1 << 30, 64, at::Device(at::kCUDA, 0)));  // not estimated there
  CHECK_THROWS_WITH(prime::eval::check_logits_fit(151936, 1 << 30, 64, at::kCPU),
                    Contains("for their logits over 151936 ids") && Contains("lower --ctx or --batch"));
  CHECK_THROWS_WITH(prime::eval::check_logits_fit(151936, 1 << 30, 1, at::kCPU), !Contains("--batch"));
}

TEST_CASE("a Hugging Face id is a source when it is in the cache", "[cli][contract]") {
  TempDir dir("hfcache");
  const fs::path repo = dir.path() / "models--Tiny--Qwen3-Fixture";
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "snapshots");
  copy_fixture(dir, "models--Tiny--Qwen3-Fixture/snapshots/abc123");
  std::ofstream(repo / "refs" / "main") << "abc123";
  const prime::test::ScopedEnv cache("HF_HUB_CACHE", dir.path().c_str());
  auto result = prime::test::run_cli("prime-inspect Tiny/Qwen3-Fixture");
  INFO(result.output);
  CHECK(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("hf-cache"));
  result = prime::test::run_cli("prime-eval --model Tiny/Qwen3-Fixture --token-ids 1,2 --device cpu");
  CHECK(result.exit_code == 0);
  result = prime::test::run_cli("prime-inspect Tiny/Not-Here");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("hf download Tiny/Not-Here"));
}

TEST_CASE("converted outputs carry the source's LICENSE and the card names it", "[cli][contract][convert]") {
  TempDir dir("license");
  const fs::path source = copy_fixture(dir, "source");
  std::ofstream(source / "LICENSE") << "Apache License 2.0 (test)\n";
  auto result = prime::test::run_cli("prime-convert --source " + source.string() + " --layer GDN --ratio 1:1 --out " +
                                     (dir / "out"));
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(fs::exists(dir.path() / "out" / "LICENSE"));
  std::ifstream card(dir.path() / "out" / "README.md");
  const std::string text((std::istreambuf_iterator<char>(card)), std::istreambuf_iterator<char>());
  CHECK_THAT(text, Contains("`LICENSE`"));
  CHECK_THAT(text, !Contains("prime-train"));
}

TEST_CASE("an interrupted prime-convert leaves nothing, a killed one is cleaned up by the next run", "[cli][contract][convert]") {
  TempDir dir("signal");
  // Large enough that writing takes a while (a 6-layer Qwen3-0.6B-shaped model, ~370 MB in bf16).
  const std::string source = "synthetic:qwen3-0.6b@layers=6";
  const std::string out = dir / "out";
  for (int signal_number : {SIGINT, SIGTERM, SIGPIPE}) {  // SIGPIPE: `prime-convert ... | head`
    std::fflush(nullptr);  // the child must not print this process's buffered output again
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::signal(SIGPIPE, SIG_DFL);  // as from a shell, whatever this process does with it
      const std::string binary = prime::test::bin_dir() + "/prime-convert";
      ::freopen("/dev/null", "w", stdout);
      ::execl(binary.c_str(), "prime-convert", "--source", source.c_str(), "--layer", "GDN", "--ratio", "1:1", "--out",
              out.c_str(), "--quiet", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Signal once the staging directory holds a shard being written.
    bool writing = false;
    for (int wait = 0; wait < 1200 && !writing; ++wait) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      for (const auto& name : hidden_entries(dir.path()))
        if (fs::exists(dir.path() / name / "config.json")) writing = true;
    }
    CHECK(writing);
    ::kill(child, signal_number);
    int status = 0;
    ::waitpid(child, &status, 0);
    INFO("signal " << signal_number << ", status " << status);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == signal_number);
    CHECK(hidden_entries(dir.path()).empty());
    CHECK_FALSE(fs::exists(out));
  }
  // SIGKILL cannot be caught: its leftover (named after the dead pid) goes at the next run.
  std::fflush(nullptr);
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const fs::path leftover = dir.path() / (".small.tmp-" + std::to_string(dead) + "-abc");
  fs::create_directories(leftover);
  std::ofstream(leftover / "model-00001-of-00001.safetensors") << "partial";
  const fs::path alive = dir.path() / (".small.tmp-" + std::to_string(::getpid()) + "-abc");
  fs::create_directories(alive);  // a running process's staging directory is left alone
  auto result = prime::test::run_cli("prime-convert --source '" + tiny + "' --layer GDN --ratio 1:1 --out " +
                                     (dir / "small"));
  INFO(result.output);
  CHECK(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("removed " + leftover.string()));
  CHECK_FALSE(fs::exists(leftover));
  CHECK(fs::exists(alive));
}

TEST_CASE("prime-data: --out-dir is created, existing shards need --force, a killed run's temp file is removed", "[cli][contract][data]") {
  TempDir dir("data");
  std::ofstream(dir / "a.txt") << "One paragraph.\n\nAnother one here.\n";
  const std::string tokenizer =
      " --tokenizer " + (prime::test::shared_dir() / "data/tokenizers/gpt2-bytelevel-bpe.tokenizer.json").string();
  const std::string out_dir = dir / "new/shards";
  auto result = prime::test::run_cli("prime-data tokenize " + (dir / "a.txt") + tokenizer + " --out-dir " + out_dir);
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK(fs::exists(fs::path(out_dir) / "a.tok"));
  result = prime::test::run_cli("prime-data tokenize " + (dir / "a.txt") + tokenizer + " --out-dir " + out_dir);
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("already exists"));
  // A temporary shard left by a process that no longer exists goes, and the run says so.
  std::fflush(nullptr);
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const fs::path leftover = fs::path(out_dir) / (".a.tok.tmp-" + std::to_string(dead) + "-0");
  std::ofstream(leftover) << "partial";
  result = prime::test::run_cli("prime-data tokenize " + (dir / "a.txt") + tokenizer + " --out-dir " + out_dir + " --force");
  CHECK(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("removed " + leftover.string()));
  CHECK_FALSE(fs::exists(leftover));
  result = prime::test::run_cli("prime-data pack " + out_dir + "/a.tok --seq-len 4 --out " + out_dir + "/a.tok");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--out " + out_dir + "/a.tok already exists"));
  // A run that fails takes back the --out-dir it created (and leaves one that existed).
  std::ofstream(dir / "bad.jsonl") << "{\"text\": \"fine\"}\nnot json\n";
  result = prime::test::run_cli("prime-data tokenize " + (dir / "bad.jsonl") + tokenizer + " --out-dir " + (dir / "fresh"));
  CHECK(result.exit_code == 1);
  CHECK_FALSE(fs::exists(dir / "fresh"));
  result = prime::test::run_cli("prime-data tokenize " + (dir / "bad.jsonl") + tokenizer + " --out-dir " + out_dir);
  CHECK(result.exit_code == 1);
  CHECK(fs::is_directory(out_dir));
}
