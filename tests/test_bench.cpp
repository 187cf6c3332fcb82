// prime-bench decode: rows for every (B, P), cache bytes (KV grows with context, SSM state does
// not), the traffic floor, ratios vs the first model; the CLI end to end.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "eval/decode_bench.h"
#include "eval/decode_step_bench.h"
#include "eval/packed_documents_bench.h"
#include "io/source.h"
#include "io/synthetic.h"
#include "test_data_util.h"
#include "test_helpers.h"
#include "util/error.h"

using namespace prime;
using Catch::Matchers::Contains;

namespace {

// The tiny Qwen3 with its first layer turned into GDN (tensor layout of design/formats.md).
eval::BenchModel gdn_hybrid() {
  auto source = io::resolve_source(test::tiny_model(97));
  nlohmann::json raw = source.config.raw;
  raw["model_type"] = "hybrid_qwen3";
  raw["hybrid_override_pattern"] = "GDN-*";
  raw["gdn_config"] = {{"hidden_size", 64}, {"head_dim", 16}, {"num_q_heads", 4}, {"num_k_heads", 2}, {"num_v_heads", 2}};
  auto weights = io::load_source_weights(source);
  for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "q_norm.weight", "k_norm.weight"})
    weights.erase(std::string("model.layers.0.self_attn.") + name);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> gdn = {
      {"q_proj.weight", {64, 64}}, {"k_proj.weight", {32, 64}},   {"v_proj.weight", {32, 64}},
      {"b_proj.weight", {4, 64}},  {"gk_proj.weight", {4, 64}},   {"A_log", {4}},
      {"dt_bias", {4}},            {"q_conv1d.weight", {64, 1, 4}}, {"k_conv1d.weight", {32, 1, 4}},
      {"v_conv1d.weight", {32, 1, 4}}, {"g_proj.weight", {64, 64}}, {"o_norm.weight", {16}},
      {"o_proj.weight", {64, 64}}};
  for (const auto& [name, shape] : gdn)
    weights["model.layers.0.gdn." + name] = io::synthetic_tensor("model.layers.0.gdn." + name, shape, 3);
  return eval::make_bench_model("tiny GDN hybrid", io::ModelConfig::from_json(raw, "test hybrid"),
                                model::prepare_weights(weights, {}));
}

}  // namespace

TEST_CASE("decode bench: rows, cache bytes, traffic floor and ratios", "[bench]") {
  auto transformer = eval::load_bench_model(test::tiny_model(97), {});
  auto hybrid = gdn_hybrid();
  eval::DecodeBenchOptions options;
  options.batches = {1, 2};
  options.prompts = {5, 9};
  options.new_tokens = 3;
  options.warmup = 1;
  options.prefill_tokens = 8;  // forces a chunked prefill
  std::vector<eval::DecodeBenchRow> rows = eval::run_decode_bench(transformer, options);
  REQUIRE(rows.size() == 8);  // (P, B, mode): eager, then graph (static on a CPU)
  const int64_t kv_per_token = 2 /*layers*/ * 2 /*k,v*/ * 2 /*kv heads*/ * 16 * 4 /*fp32*/;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    INFO(row.batch << " x " << row.prompt << " " << row.mode);
    CHECK(row.mode == (i % 2 == 0 ? "eager" : "static"));  // a CPU model has no graph
    CHECK(row.error.empty());
    CHECK(row.decode_tokens_per_s > 0);
    CHECK(row.prefill_tokens_per_s > 0);
    // Both modes allocate the cache once for P + warm-up + N tokens and fill it.
    CHECK(row.kv_bytes_per_sequence == kv_per_token * (row.prompt + 4));
    CHECK(row.state_bytes_per_sequence == 0);
    // Every weight once per step (the tiny Qwen3 ties the embedding table to the LM head).
    const double kv_mean = 0.5 * kv_per_token * (2 * row.prompt + 4);
    CHECK(row.step_bytes == Approx(double(transformer.weight_bytes_per_step) + row.batch * kv_mean));
    CHECK(row.floor_step_seconds == Approx(row.step_bytes / 4.8e12));
  }
  CHECK(transformer.weight_bytes_per_step == transformer.parameters * 4);

  for (auto& row : eval::run_decode_bench(hybrid, options)) {
    CHECK(row.kv_bytes_per_sequence == kv_per_token / 2 * (row.prompt + 4));  // one attention layer left
    CHECK(row.state_bytes_per_sequence > 0);
    rows.push_back(row);
  }
  // The GDN state does not grow with the context.
  CHECK(rows[8].state_bytes_per_sequence == rows[12].state_bytes_per_sequence);
  std::ostringstream table;
  eval::print_decode_table(rows, options, table);
  INFO(table.str());
  CHECK_THAT(table.str(), Contains("tiny GDN hybrid"));
  CHECK_THAT(table.str(), Contains("x dec"));
  CHECK_THAT(table.str(), Contains("x eager"));
  const auto json = eval::to_json(rows, options);
  CHECK(json["rows"].size() == 16);
  CHECK(json["rows"][1]["mode"] == "static");
  CHECK(json["rows"][0]["kv_bytes_per_sequence"] == kv_per_token * 9);
}

// Repeated prefills each start from a fresh cache: the decode after them sees P tokens, not 3 P.
TEST_CASE("decode bench: --prefill-repeats times several prefills into fresh caches", "[bench]") {
  auto hybrid = gdn_hybrid();
  eval::DecodeBenchOptions options;
  options.prompts = {7};
  options.new_tokens = 2;
  options.warmup = 1;
  options.prefill_tokens = 4;
  options.prefill_repeats = 3;
  const int64_t kv_per_token = 2 /*k,v*/ * 2 /*kv heads*/ * 16 * 4 /*fp32*/;  // one attention layer
  const std::vector<eval::DecodeBenchRow> rows = eval::run_decode_bench(hybrid, options);
  REQUIRE(rows.size() == 2);
  for (const auto& row : rows) {
    CHECK(row.error.empty());
    CHECK(row.prefill_tokens_per_s > 0);
    CHECK(row.kv_bytes_per_sequence == kv_per_token * (7 + 3));
  }
  std::ostringstream table;
  eval::print_decode_table(rows, options, table);
  CHECK_THAT(table.str(), Contains("prefill P (the median of 3 runs)"));
  CHECK(eval::to_json(rows, options)["prefill_repeats"] == 3);
  options.prefill_repeats = 0;
  CHECK_THROWS_AS(eval::run_decode_bench(hybrid, options), UserError);
}

// --profile-step runs the last warm-up step inside a profiler range (on a CPU, without one): with
// enough warm-up steps the row's cache sizes and floor are those of the same run without it.
TEST_CASE("decode bench: --profile-step leaves the row's cache sizes and floor as they were", "[bench]") {
  auto hybrid = gdn_hybrid();
  eval::DecodeBenchOptions options;
  options.prompts = {6};
  options.batches = {2};
  options.new_tokens = 3;
  options.warmup = 3;
  options.context = "synthetic";
  const std::vector<eval::DecodeBenchRow> plain = eval::run_decode_bench(hybrid, options);
  options.profile_step = true;
  CHECK(eval::decode_steps(options, false) == 3 + 3);
  options.warmup = 0;  // raised to what the profiled replay needs
  CHECK(eval::decode_steps(options, false) == 2 + 3);
  CHECK(eval::decode_steps(options, true) == 3 + 3);
  options.profile_step = false;
  CHECK(eval::decode_steps(options, false) == 0 + 3);
  CHECK(eval::decode_steps(options, true) == 2 + 3);
  options.profile_step = true;
  options.warmup = 3;
  const std::vector<eval::DecodeBenchRow> profiled = eval::run_decode_bench(hybrid, options);
  REQUIRE(profiled.size() == plain.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    INFO(plain[i].mode);
    CHECK(profiled[i].error.empty());
    CHECK(profiled[i].decode_tokens_per_s > 0);
    CHECK(profiled[i].kv_bytes_per_sequence == plain[i].kv_bytes_per_sequence);
    CHECK(profiled[i].state_bytes_per_sequence == plain[i].state_bytes_per_sequence);
    CHECK(profiled[i].step_bytes == Approx(plain[i].step_bytes));
  }
}

TEST_CASE("decode bench: a mixture of experts' floor counts the experts its tokens pick", "[bench][moe]") {
  // 8 experts, 2 per token, 2 layers: each layer's 8 experts hold gate, up and down [32, 64].
  auto moe = eval::load_bench_model(
      "synthetic:qwen3-30b-a3b@layers=2,hidden=64,heads=4,kv_heads=2,head_dim=16,moe_intermediate=32,experts=8,"
      "experts_per_tok=2,vocab=97,seed=3",
      {});
  const int64_t expert_bytes = 2 /*layers*/ * 8 /*experts*/ * 3 * 32 * 64 * 4 /*fp32*/;
  CHECK(moe.expert_bytes == expert_bytes);
  CHECK(moe.expert_pick_fraction == Approx(0.25));
  CHECK(moe.weight_bytes_per_step + moe.expert_bytes <= moe.parameters * 4);  // the untied embedding table aside
  CHECK(moe.weight_bytes_read(1) == Approx(moe.weight_bytes_per_step + 0.25 * expert_bytes));
  CHECK(moe.weight_bytes_read(2) == Approx(moe.weight_bytes_per_step + (1 - 0.75 * 0.75) * expert_bytes));
  CHECK(moe.weight_bytes_read(1000) == Approx(double(moe.weight_bytes_per_step + expert_bytes)));

  eval::DecodeBenchOptions options;
  options.batches = {1, 3};
  options.prompts = {5};
  options.modes = {"eager"};
  options.new_tokens = 2;
  options.warmup = 1;
  for (const auto& row : eval::run_decode_bench(moe, options)) {
    INFO("B = " << row.batch);
    REQUIRE(row.error.empty());
    CHECK(row.step_bytes > moe.weight_bytes_read(row.batch));  // plus the KV cache
    CHECK(row.step_bytes < moe.weight_bytes_read(row.batch) + row.batch * row.kv_bytes_per_sequence + 1);
  }
  // A dense model has no experts: every weight once per step, whatever the batch.
  auto dense = eval::load_bench_model(test::tiny_model(97), {});
  CHECK(dense.expert_bytes == 0);
  CHECK(dense.weight_bytes_read(64) == Approx(double(dense.weight_bytes_per_step)));
}

TEST_CASE("packed-documents bench: each SSM type's converted layer, packed and bucketed, on the CPU", "[bench][documents]") {
  eval::PackedDocumentsBenchOptions options;
  options.batch = 2;
  options.tokens = 200;
  options.hidden = 32;
  options.heads = 2;
  options.head_dim = 16;
  options.min_length = 4;
  options.max_length = 150;
  options.warmup = 0;
  options.repeats = 1;
  for (const std::string type : {"GDN", "GKA", "M2"}) {
    options.type = type;
    const eval::PackedDocumentsBenchRow row = eval::run_packed_documents_bench(options, at::kCPU);
    INFO(type << " " << row.shape);
    CHECK(row.type == type);
    CHECK_THAT(row.shape, Contains("(2,200,32,2,16) bf16") && Contains("documents"));
    CHECK(row.chunk_tokens >= 1.0);  // chunks of 64 per document: never fewer slots than tokens
    CHECK(row.bucket_tokens >= 1.0);
    for (double ms : {row.packed_forward_ms, row.packed_forward_backward_ms, row.bucketed_forward_ms,
                      row.bucketed_forward_backward_ms})
      CHECK(ms > 0);
  }
  options.type = "SWA";
  CHECK_THROWS_WITH(eval::run_packed_documents_bench(options, at::kCPU), Contains("unknown SSM type 'SWA'"));
}

TEST_CASE("decode step bench: needs a CUDA device", "[bench]") {
  CHECK_THROWS_AS(eval::run_decode_step_bench({}, at::kCPU), UserError);
}

TEST_CASE("decode step bench: GKA's step with its solve in float64 and fp32 and without it", "[bench][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  eval::DecodeStepBenchOptions options;
  options.batches = {3};
  options.attention_points = {};
  options.warmup = 1, options.repeats = 1, options.steps_per_repeat = 2;
  std::vector<eval::DecodeStepBenchRow> gka;
  for (const auto& row : eval::run_decode_step_bench(options, at::Device(at::kCUDA)))
    if (row.type == "GKA") gka.push_back(row);
  REQUIRE(gka.size() == 3);
  CHECK(gka[0].shape == "B=3 H=32 128x128 N=30 f64");
  CHECK(gka[1].shape == "B=3 H=32 128x128 N=30 f32");
  CHECK(gka[2].shape == "B=3 H=32 128x128 N=0");
  // Both fp32 states read and written (S alone without the solve), q, k, v and the three gates (S's decay alone
  // without the solve) read in the solve dtype and o written in fp32, for each of the B H = 96 heads of D = 128.
  const double state = 4.0 * 3 * 32 * 128 * 128, heads = 3 * 32, D = 128;
  CHECK(gka[0].floor_bytes == 4 * state + heads * (8 * (3 * D + 3) + 4 * D));
  CHECK(gka[1].floor_bytes == 4 * state + heads * (4 * (3 * D + 3) + 4 * D));
  CHECK(gka[2].floor_bytes == 2 * state + heads * (4 * (3 * D + 1) + 4 * D));
  for (const auto& row : gka) {
    INFO(row.shape);
    CHECK(row.kernel_ms > 0);
    CHECK(row.torch_ms > 0);
    CHECK(row.copy_tbps > 0);
  }
}

TEST_CASE("prime-bench decode: several models side by side, bad input exits 1", "[bench][cli]") {
  test::ScratchDir dir("bench");
  auto result = test::run_cli("prime-bench decode --model '" + test::tiny_model(97) + "' --model '" + test::tiny_model(300) +
                              "' --device cpu --dtype fp32 --batch 1,2 --prompt 8 --new-tokens 2 --json " + dir.file("d.json"));
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("decode t/s"));
  const auto json = nlohmann::json::parse(test::read_bytes(dir.file("d.json")));
  CHECK(json["rows"].size() == 8);  // 2 models x 2 batches x (eager, graph)
  // An existing --json is refused before anything runs, and replaced with --force.
  const std::string again = "prime-bench decode --model '" + test::tiny_model(97) +
                            "' --device cpu --dtype fp32 --batch 1 --prompt 8 --new-tokens 2 --mode eager --json " +
                            dir.file("d.json");
  result = test::run_cli(again);
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--json") && Contains("already exists") && !Contains("decode t/s"));
  CHECK(nlohmann::json::parse(test::read_bytes(dir.file("d.json")))["rows"].size() == 8);
  result = test::run_cli(again + " --force");
  CHECK(result.exit_code == 0);
  CHECK(nlohmann::json::parse(test::read_bytes(dir.file("d.json")))["rows"].size() == 1);
  result = test::run_cli("prime-bench decode --model synthetic:nope --device cpu");
  CHECK(result.exit_code == 1);
  result = test::run_cli("prime-bench decode --model '" + test::tiny_model(97) + "' --device cpu --mode fast");
  CHECK(result.exit_code == 1);
  result = test::run_cli("prime-bench decode --model '" + test::tiny_model(97) + "' --device cpu --batch 0");
  CHECK(result.exit_code == 1);
  result = test::run_cli("prime-bench decode --model '" + test::tiny_model(97) + "' --device cpu --context cached");
  CHECK(result.exit_code == 1);
  for (const char* flag : {"--prefill-repeats 0", "--hbm-gbps -1", "--hbm-gbps inf", "--prefill-tokens 0"}) {
    result = test::run_cli("prime-bench decode --model '" + test::tiny_model(97) + "' --device cpu " + flag);
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.output, Contains("must be a finite number > 0"));
  }
  result = test::run_cli("prime-bench decode --model '" + test::tiny_model(97) + "' --device cpu --warmup -1");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--warmup: must be a finite number >= 0"));
  // A shape of no tokens is a user's mistake (exit 1), not an internal error.
  for (const char* flag : {"--tokens -5", "--batch 0", "--repeats 0"}) {
    result = test::run_cli(std::string("prime-bench ssm --device cpu ") + flag);
    CHECK(result.exit_code == 1);
    CHECK_THAT(result.output, Contains("must be a finite number > 0"));
  }
  result = test::run_cli("prime-bench decode --model '" + test::tiny_model(97) +
                         "' --device cpu --context synthetic --prompt 16 --new-tokens 2 --mode static");
  CHECK(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("synthetic"));
  // The cores compute in fp32 or fp64: a bf16 core is refused, not an internal error.
  result = test::run_cli("prime-bench ssm --device cpu --dtype bf16 --batch 1 --tokens 16 --heads 1 --head-dim 16");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("fp32 or fp64"));
  // The kernels' benchmark needs CUDA; on a CPU it says so before printing anything.
  result = test::run_cli("prime-bench kernels --device cpu");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("needs a CUDA device"));
  CHECK_THAT(result.output, !Contains("TFLOP/s"));
  // bf16 times the bf16 forms of GDN, GKA and Mamba-2 (every default type); a type without one
  // is refused first, fp16 always.
  result = test::run_cli("prime-bench kernels --device cpu --dtype bf16 --types GDN,SWA");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--types GDN,GKA,M2"));
  result = test::run_cli("prime-bench kernels --device cpu --dtype fp16 --types GDN");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("fp32 or fp64"));
  result = test::run_cli("prime-bench kernels --device cpu --dtype bf16");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("needs a CUDA device"));
  // The profiled pass too.
  result = test::run_cli("prime-bench kernels --profile --device cpu --types GKA");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("needs a CUDA device"));
  CHECK_THAT(result.output, !Contains("profiled once"));
}

TEST_CASE("prime-bench train: one align step of a tiny hybrid, bad input exits 1", "[bench][cli][train]") {
  const std::string teacher =
      "synthetic:qwen3-0.6b@layers=2,hidden=32,heads=2,kv_heads=1,head_dim=16,intermediate=64,vocab=64,seed=3";
  const std::string hybrid = "prime-bench train --model '" + teacher + "+convert:GDN:1:1' --teacher '" + teacher + "'";
  auto result = test::run_cli(hybrid + " --seq-len 32 --device cpu --repeats 1 --warmup 0");
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("1 replaced layers"));
  CHECK_THAT(result.output, Contains("% of the step"));
  CHECK_THAT(result.output, Contains("teacher and student built in"));
  // Both policies on the same models, each timing labelled, then their ratio.
  result = test::run_cli(hybrid + " --seq-len 32 --device cpu --repeats 1 --warmup 0 --compare-kernels");
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("kernels: step time"));
  CHECK_THAT(result.output, Contains("torch-ops: step time"));
  CHECK_THAT(result.output, Contains("torch-ops: replaced layers' mixers"));
  CHECK_THAT(result.output, Contains("torch-ops time / kernels time, same models in one run: step"));
  CHECK_THAT(result.output, Contains("here both are the torch-ops forms"));
  // One step in a profiler range, no timings.
  result = test::run_cli(hybrid + " --seq-len 32 --device cpu --profile");
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("profiled one step"));
  CHECK_THAT(result.output, !Contains("step time"));
  result = test::run_cli(hybrid + " --seq-len 32 --device cpu --profile --compare-kernels");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("does not combine"));
  result = test::run_cli("prime-bench train --model '" + teacher + "+convert:GDN:1:1' --teacher '' --device cpu");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("needs --teacher"));
  result = test::run_cli("prime-bench train --model synthetic:nope --teacher '" + teacher + "' --device cpu");
  CHECK(result.exit_code == 1);
  result = test::run_cli(hybrid + " --device cpu --batch 0");
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("--batch: must be a finite number > 0, not '0'"));
}

TEST_CASE("prime-bench convert: the source is evicted before each run unless --no-evict", "[bench][cli]") {
  const std::string work =
      (std::filesystem::temp_directory_path() / ("prime_bench_convert_" + std::to_string(::getpid()))).string();
  const std::string command = "prime-bench convert --source "
                              "'synthetic:qwen3-0.6b@layers=2,hidden=64,heads=4,kv_heads=2,head_dim=16,intermediate=96,"
                              "vocab=300' --rounds 1 --work-dir '" + work + "'";
  auto result = test::run_cli(command);
  INFO(result.output);
  CHECK(result.exit_code == 0);
  CHECK_THAT(result.output, Catch::Matchers::Contains("page cache: source evicted before each run"));
  result = test::run_cli(command + " --no-evict");
  INFO(result.output);
  CHECK(result.exit_code == 0);
  CHECK_THAT(result.output, Catch::Matchers::Contains("page cache: left as it was"));
  std::filesystem::remove_all(work);
}
