// prime-convert end to end on tiny real-format checkpoints: what is copied is bit-identical, what
// is transferred equals its formula, what is random follows its recipe, and the result loads in
// HybridModel and runs forward and generation, for every family and target type.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <cstring>

#include "convert/hybrid_config.h"
#include "eval/generate.h"
#include "io/safetensors_writer.h"
#include "model/gka.h"
#include "model/load_model.h"
#include "test_convert_util.h"
#include "util/error.h"

using namespace prime;
using namespace prime::convert;
using Catch::Matchers::Contains;

namespace {

bool starts_with(const std::string& text, const std::string& prefix) { return text.compare(0, prefix.size(), prefix) == 0; }

at::Tensor logits_of(const std::string& spec, const std::vector<int64_t>& ids) {
  auto loaded = model::load_model(spec, {at::kCPU, at::kFloat});
  at::NoGradGuard no_grad;
  return loaded.model->forward(at::tensor(ids, at::kLong).unsqueeze(0));
}

// Loads a converted checkpoint, runs forward and greedy generation. Every layer type this
// converter writes must run: a mixer missing from the build is a failure, not a skip.
void runs_in_hybrid_model(const std::filesystem::path& dir) {
  auto loaded = model::load_model(dir.string(), {at::kCPU, at::kFloat});
  at::NoGradGuard no_grad;
  const at::Tensor prompt = at::tensor(std::vector<int64_t>{1, 5, 9, 2, 7}, at::kLong).unsqueeze(0);
  const at::Tensor logits = loaded.model->forward(prompt);
  CHECK(logits.size(1) == 5);
  CHECK(at::isfinite(logits).all().item<bool>());
  const auto tokens = eval::greedy_generate(*loaded.model, prompt, {6, {}});
  CHECK(tokens.front().size() == 6);
}

}  // namespace

TEST_CASE("convert: Qwen3 (GQA, head_dim != hidden/heads) to GKA, tensor by tensor", "[convert]") {
  test::ConvertTempDir dir("gka");
  const auto source_dir = test::parity_fixture("qwen3");
  auto options = test::pattern_options(source_dir.string(), "GKA-*", dir / "out");
  options.seed = 11;
  const ConversionPlan plan = test::convert_quietly(options);
  const io::Checkpoint in = io::Checkpoint::open(source_dir), out = io::Checkpoint::open(dir / "out");

  // Attention layer 1, embeddings, norms, MLPs, lm_head: bit-identical, same dtype.
  for (const auto& name : in.names()) {
    if (starts_with(name, "model.layers.0.self_attn.")) {
      CHECK_FALSE(out.contains(name));
      continue;
    }
    INFO(name);
    REQUIRE(out.contains(name));
    CHECK(out.info(name).dtype == in.info(name).dtype);
    CHECK(at::equal(out.tensor(name), in.tensor(name)));
  }
  // Transferred: exactly the attention weights; the gate exactly its formula.
  const std::string a = "model.layers.0.self_attn.", g = "model.layers.0.gka.";
  for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"})
    CHECK(at::equal(out.tensor(g + proj + ".weight"), in.tensor(a + proj + ".weight")));
  const at::Tensor W_O = in.tensor(a + "o_proj.weight"), W_V = in.tensor(a + "v_proj.weight");
  CHECK(W_V.size(0) == 2 * 32);  // 2 kv heads of head_dim 32, hidden 64
  CHECK(at::equal(out.tensor(g + "g_proj.weight"), (W_O.t() + W_V.repeat_interleave(2, 0)) * 0.5));
  // Random and constant parts.
  const at::Tensor A = out.tensor(g + "A_log").exp();
  CHECK(out.info(g + "A_log").dtype == io::DType::F32);
  CHECK(((A > 0) & (A <= 16)).all().item<bool>());
  const at::Tensor dt = at::softplus(out.tensor(g + "dt_bias").to(at::kDouble));
  CHECK(((dt >= 1e-3 - 1e-9) & (dt <= 0.1 + 1e-9)).all().item<bool>());
  CHECK(at::equal(out.tensor(g + "b_proj.bias"), at::zeros({4})));
  CHECK(at::equal(out.tensor(g + "alpha_proj.bias"), at::zeros({4})));
  CHECK(at::equal(out.tensor(g + "o_norm.weight"), at::ones({32})));
  CHECK(at::equal(out.tensor(g + "a_proj.weight"), normal_init(g + "a_proj.weight", {4, 64}, 11)));
  CHECK(out.info(g + "q_conv1d.weight").shape == std::vector<int64_t>{128, 1, 4});
  CHECK(out.info(g + "v_conv1d.weight").shape == std::vector<int64_t>{64, 1, 4});
  // Qwen3's q_norm/k_norm of the converted layer are not carried.
  CHECK(std::find(plan.dropped.begin(), plan.dropped.end(), a + "q_norm.weight") != plan.dropped.end());
  CHECK(plan.dropped.size() == 2);

  // config.json, prime.json, README.md.
  const auto config = nlohmann::json::parse(test::read_text(dir / "out" / "config.json"));
  CHECK(config["model_type"] == "hybrid_qwen3");
  CHECK(config["hybrid_override_pattern"] == "GKA-*");
  CHECK(config["layer_types"] == nlohmann::json::array({"GKA", "*"}));
  CHECK(model::GkaConfig::from_json(config["gka_config"], "test").num_k_heads == 2);
  CHECK_FALSE(config.contains("gdn_config"));
  const auto provenance = nlohmann::json::parse(test::read_text(dir / "out" / "prime.json"));
  CHECK(provenance["plan"]["pattern"] == "GKA-*");
  CHECK(provenance["init"]["recipe"] == "hmf");
  CHECK(provenance["init"]["seed"] == 11);
  CHECK(provenance["source"]["dir"] == source_dir.string());
  CHECK(out.metadata().at("prime") == provenance.dump());
  const std::string card = test::read_text(dir / "out" / "README.md");
  CHECK_THAT(card, Contains("| 0 | GKA | from attention layer 0; 0.5*(W_O^T + R_row(W_V)) |"));
  CHECK_THAT(card, Contains("| 1 | attention | attention, unchanged |"));
  CHECK_THAT(card, Contains("prime-convert (test)"));
  runs_in_hybrid_model(dir / "out");
}

TEST_CASE("convert: every family converts and runs (MoE passes through, biases, tied embeddings)", "[convert]") {
  struct Case {
    const char* fixture;
    const char* pattern;
  };
  for (const Case& c : {Case{"qwen2", "GDN-*"}, Case{"llama3", "*-M2"}, Case{"qwen3", "M2-*"},
                        Case{"mistral", "SWA-*"}, Case{"qwen3_moe", "*-GKA-GDN"}, Case{"qwen3_tied", "GDN-M2"}}) {
    INFO(c.fixture << " " << c.pattern);
    test::ConvertTempDir dir(std::string("family_") + c.fixture);
    const auto source_dir = test::parity_fixture(c.fixture);
    const ConversionPlan plan = test::convert_quietly(test::pattern_options(source_dir.string(), c.pattern, dir / "out"));
    const io::Checkpoint in = io::Checkpoint::open(source_dir), out = io::Checkpoint::open(dir / "out");
    const auto& source = plan.source.config;
    // Every MLP / MoE / norm / embedding tensor is bit-identical.
    for (const auto& name : in.names())
      if (name.find(".self_attn.") == std::string::npos) CHECK(at::equal(out.tensor(name), in.tensor(name)));
    if (std::string(c.fixture) == "qwen3_moe") CHECK(source.moe.num_experts > 0);
    if (std::string(c.fixture) == "llama3") {  // no q_norm/k_norm: Mamba-2's B/C norms start at 1
      CHECK(at::equal(out.tensor("model.layers.1.mamba.B_norm.weight"), at::ones({source.head_dim})));
      const at::Tensor in_proj = out.tensor("model.layers.1.mamba.in_proj.weight");
      const int64_t q = source.num_attention_heads * source.head_dim, kv = source.num_key_value_heads * source.head_dim;
      CHECK(at::equal(in_proj.narrow(0, q, kv), in.tensor("model.layers.1.self_attn.v_proj.weight")));
      CHECK(at::equal(in_proj.narrow(0, q + kv, kv), in.tensor("model.layers.1.self_attn.k_proj.weight")));
      CHECK(at::equal(in_proj.narrow(0, q + 2 * kv, q), in.tensor("model.layers.1.self_attn.q_proj.weight")));
      const at::Tensor gate = gate_from_attention(in.tensor("model.layers.1.self_attn.o_proj.weight"),
                                                  in.tensor("model.layers.1.self_attn.v_proj.weight"),
                                                  source.head_dim, GateMode::RowRepeat);
      CHECK(at::equal(in_proj.narrow(0, 0, q), gate));
    }
    if (std::string(c.fixture) == "qwen3") {  // B_norm <- k_norm, C_norm <- q_norm
      CHECK(at::equal(out.tensor("model.layers.0.mamba.B_norm.weight"), in.tensor("model.layers.0.self_attn.k_norm.weight")));
      CHECK(at::equal(out.tensor("model.layers.0.mamba.C_norm.weight"), in.tensor("model.layers.0.self_attn.q_norm.weight")));
      CHECK(at::equal(out.tensor("model.layers.0.mamba.D"), at::ones({source.num_attention_heads})));
    }
    if (std::string(c.fixture) == "mistral")  // SWA keeps the attention weights under swa.
      for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"})
        CHECK(at::equal(out.tensor(std::string("model.layers.0.swa.") + proj + ".weight"),
                        in.tensor(std::string("model.layers.0.self_attn.") + proj + ".weight")));
    if (std::string(c.fixture) == "qwen2") {  // q/k/v biases have no place in GDN: not carried
      CHECK(std::find(plan.dropped.begin(), plan.dropped.end(), "model.layers.0.self_attn.q_proj.bias") != plan.dropped.end());
      CHECK(out.contains("model.layers.1.self_attn.q_proj.bias"));
      CHECK_FALSE(out.contains("lm_head.weight"));  // tied
    }
    runs_in_hybrid_model(dir / "out");
  }
}

TEST_CASE("convert: an all-attention pattern reproduces the source weights exactly and its logits", "[convert]") {
  for (const char* fixture : {"qwen3", "qwen3_moe", "qwen2"}) {
    test::ConvertTempDir dir(std::string("identity_") + fixture);
    const auto source_dir = test::parity_fixture(fixture);
    const int64_t layers = io::resolve_source(source_dir.string()).config.num_hidden_layers;
    test::convert_quietly(test::pattern_options(
        source_dir.string(), io::join_layer_pattern(std::vector<std::string>(layers, "*")), dir / "out"));
    INFO(fixture);
    const io::Checkpoint in = io::Checkpoint::open(source_dir), out = io::Checkpoint::open(dir / "out");
    CHECK(out.names().size() == in.names().size());
    for (const auto& name : in.names()) CHECK(at::equal(out.tensor(name), in.tensor(name)));
    // The same weights at other file offsets: CPU kernels may pick another summation order for
    // differently aligned data (seen for the MoE experts), so the logits agree to fp32 rounding.
    const std::vector<int64_t> ids = {3, 1, 4, 1, 5, 9, 2, 6};
    CHECK(test::relative_error(logits_of((dir / "out").string(), ids), logits_of(source_dir.string(), ids)) <= 1e-5);
  }
}

TEST_CASE("convert: deterministic, seeded, and the recipes differ where they should", "[convert]") {
  test::ConvertTempDir dir("determinism");
  const std::string source = test::tiny_synthetic(5), pattern = "GKA-GDN-M2-SWA-*";
  test::convert_quietly(test::pattern_options(source, pattern, dir / "a"));
  test::convert_quietly(test::pattern_options(source, pattern, dir / "b"));
  auto seeded = test::pattern_options(source, pattern, dir / "c");
  seeded.seed = 1;
  test::convert_quietly(seeded);
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir / "a")) {
    INFO(entry.path().filename());
    CHECK(test::read_text(entry.path()) == test::read_text(dir / "b" / entry.path().filename()));
    ++files;
  }
  CHECK(files == 4);  // model.safetensors, config.json, prime.json, README.md (synthetic: no tokenizer)
  const io::Checkpoint a = io::Checkpoint::open(dir / "a"), c = io::Checkpoint::open(dir / "c");
  CHECK(at::equal(a.tensor("model.layers.0.gka.q_proj.weight"), c.tensor("model.layers.0.gka.q_proj.weight")));
  CHECK_FALSE(at::equal(a.tensor("model.layers.0.gka.a_proj.weight"), c.tensor("model.layers.0.gka.a_proj.weight")));
  runs_in_hybrid_model(dir / "a");

  // head: the gate from whole head blocks; mambainllama: random gate and z; random: no transfer.
  auto head = test::pattern_options(source, pattern, dir / "head");
  head.init = "head";
  test::convert_quietly(head);
  auto mil = test::pattern_options(source, pattern, dir / "mil");
  mil.init = "mambainllama";
  test::convert_quietly(mil);
  auto random = test::pattern_options(source, pattern, dir / "random");
  random.init = "random";
  test::convert_quietly(random);
  const io::Checkpoint h = io::Checkpoint::open(dir / "head"), m = io::Checkpoint::open(dir / "mil"),
                       r = io::Checkpoint::open(dir / "random");
  // The synthetic source stands for its config's torch_dtype (bf16): so does the output.
  const auto weights = io::load_source_weights(io::resolve_source(source));
  auto source_tensor = [&](const std::string& name) { return weights.at(name).to(at::kBFloat16); };
  auto bf16 = [](const at::Tensor& t) { return t.to(at::kBFloat16); };
  const at::Tensor W_O = source_tensor("model.layers.1.self_attn.o_proj.weight").to(at::kFloat),
                   W_V = source_tensor("model.layers.1.self_attn.v_proj.weight").to(at::kFloat);
  const at::Tensor head_gate =
      bf16((W_O.t() + W_V.reshape({2, 32, 64}).repeat_interleave(2, 0).reshape({128, 64})) * 0.5);
  CHECK(h.info("model.layers.1.gdn.g_proj.weight").dtype == io::DType::BF16);
  CHECK(at::equal(h.tensor("model.layers.1.gdn.g_proj.weight"), head_gate));
  CHECK_FALSE(at::equal(a.tensor("model.layers.1.gdn.g_proj.weight"), head_gate));
  CHECK(at::equal(m.tensor("model.layers.1.gdn.g_proj.weight"),
                  bf16(normal_init("model.layers.1.gdn.g_proj.weight", {128, 64}, 0))));
  CHECK(at::equal(m.tensor("model.layers.1.gdn.q_proj.weight"), a.tensor("model.layers.1.gdn.q_proj.weight")));
  const at::Tensor in_proj = m.tensor("model.layers.2.mamba.in_proj.weight");
  CHECK(at::equal(in_proj.narrow(0, 0, 128), bf16(normal_init("model.layers.2.mamba.in_proj.weight#z", {128, 64}, 0))));
  CHECK(at::equal(in_proj.narrow(0, 128, 64), source_tensor("model.layers.2.self_attn.v_proj.weight")));
  CHECK(at::equal(r.tensor("model.layers.0.gka.q_proj.weight"),
                  bf16(normal_init("model.layers.0.gka.q_proj.weight", {128, 64}, 0))));
  CHECK(at::equal(r.tensor("model.layers.2.mamba.B_norm.weight"), at::ones({32}, at::kBFloat16)));
  CHECK(at::equal(r.tensor("model.layers.3.swa.q_proj.weight"), source_tensor("model.layers.3.self_attn.q_proj.weight")));
}

TEST_CASE("convert: --dtype casts weights but keeps A_log, dt_bias, D in fp32, shards + index", "[convert]") {
  test::ConvertTempDir dir("dtype");
  auto options = test::pattern_options(test::tiny_synthetic(3), "M2-GKA-*", dir / "out");
  options.dtype = "bf16";
  options.max_shard_bytes = 60000;  // several shards
  const ConversionPlan plan = test::convert_quietly(options);
  CHECK(plan.shard_count > 1);
  CHECK(std::filesystem::exists(dir / "out" / "model.safetensors.index.json"));
  const io::Checkpoint out = io::Checkpoint::open(dir / "out");
  for (const auto& name : out.names())
    CHECK(out.info(name).dtype == (is_fp32_parameter(name) ? io::DType::F32 : io::DType::BF16));
  const auto config = nlohmann::json::parse(test::read_text(dir / "out" / "config.json"));
  CHECK(config["torch_dtype"] == "bfloat16");
  // A checkpoint source cast on the way: streamed in pieces (tiny ones here), values exact.
  const auto fixture = test::parity_fixture("qwen3");
  auto cast = test::pattern_options(fixture.string(), "GKA-*", dir / "cast");
  cast.dtype = "bf16";
  ConversionPlan cast_plan = plan_conversion(cast);
  cast_plan.weights->set_chunk_bytes(100);
  std::ostringstream log;
  write_hybrid(cast_plan, cast, log, ProgressStyle::Quiet);
  const io::Checkpoint in = io::Checkpoint::open(fixture), cast_out = io::Checkpoint::open(dir / "cast");
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"})
    CHECK(at::equal(cast_out.tensor(name), in.tensor(name).to(at::kBFloat16)));
  CHECK(at::equal(cast_out.tensor("model.layers.0.gka.q_proj.weight"),
                  in.tensor("model.layers.0.self_attn.q_proj.weight").to(at::kBFloat16)));
  CHECK(cast_out.info("model.layers.0.gka.A_log").dtype == io::DType::F32);
  std::vector<char> streamed;
  cast_plan.weights->stream("lm_head.weight", at::kFloat, [&](const void* data, size_t size) {
    CHECK(size <= 100);
    streamed.insert(streamed.end(), static_cast<const char*>(data), static_cast<const char*>(data) + size);
  });
  const at::Tensor lm_head = in.tensor("lm_head.weight").contiguous();
  REQUIRE(streamed.size() == lm_head.nbytes());
  CHECK(std::memcmp(streamed.data(), lm_head.data_ptr(), streamed.size()) == 0);
  // A bf16 source converts in bf16 by default.
  auto again = test::pattern_options((dir / "out").string(), "", dir / "again");
  CHECK_THROWS_WITH(plan_conversion(again), Contains("already a hybrid"));
  runs_in_hybrid_model(dir / "out");
}

TEST_CASE("convert: tokenizer files are copied, existing outputs, missing attention and failures", "[convert][bad-input]") {
  test::ConvertTempDir dir("files");
  const auto fixture = test::parity_fixture("qwen3");
  // A source directory with tokenizer files, written by our writer from the fixture.
  std::filesystem::create_directories(dir / "src");
  std::filesystem::copy_file(fixture / "config.json", dir / "src" / "config.json");
  std::filesystem::copy_file(fixture / "model.safetensors", dir / "src" / "model.safetensors");
  std::ofstream(dir / "src" / "tokenizer.json") << "{\"model\": {\"type\": \"BPE\"}}";
  std::ofstream(dir / "src" / "generation_config.json") << "{\"do_sample\": false}";
  auto options = test::pattern_options((dir / "src").string(), "GDN-*", dir / "out");
  test::convert_quietly(options);
  for (const char* name : {"tokenizer.json", "generation_config.json"})
    CHECK(test::read_text(dir / "out" / name) == test::read_text(dir / "src" / name));

  // An existing output is refused unless forced.
  const auto plan = plan_conversion(options);
  std::ostringstream log;
  CHECK_THROWS_WITH(write_hybrid(plan, options, log, ProgressStyle::Quiet), Contains("already exists"));
  options.force = true;
  CHECK_NOTHROW(write_hybrid(plan, options, log, ProgressStyle::Quiet));

  // A failure mid-write removes the staging directory and says so; the output is untouched.
  ConversionPlan broken = plan_conversion(test::pattern_options((dir / "src").string(), "GDN-*", dir / "broken"));
  broken.targets[3].copy = false;
  broken.targets[3].make = [](const SourceReader&) -> at::Tensor { throw user_error("No space left on device (simulated)"); };
  CHECK_THROWS_WITH(write_hybrid(broken, test::pattern_options((dir / "src").string(), "GDN-*", dir / "broken"), log,
                                 ProgressStyle::Quiet),
                    Contains("No space left on device (simulated)") && Contains("nothing was written to") &&
                        Contains("has been removed"));
  CHECK_FALSE(std::filesystem::exists(dir / "broken"));
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    CHECK(entry.path().filename().string().find(".tmp-") == std::string::npos);

  // A source without a layer's attention weights.
  {
    const io::Checkpoint in = io::Checkpoint::open(fixture);
    std::filesystem::create_directories(dir / "noattn");
    std::filesystem::copy_file(fixture / "config.json", dir / "noattn" / "config.json");
    io::SafetensorsWriter writer(dir / "noattn", {});
    for (const auto& name : in.names())
      if (name != "model.layers.1.self_attn.q_proj.weight") writer.add(name, in.info(name).dtype, in.info(name).shape, [&in, name] { return in.tensor(name); });
    writer.write();
  }
  CHECK_THROWS_WITH(plan_conversion(test::pattern_options((dir / "noattn").string(), "GDN-*", dir / "x")),
                    Contains("missing tensor model.layers.1.self_attn.q_proj.weight"));
}

TEST_CASE("convert: SafetensorsWriter::add_stream and add_file_copy, wrong byte counts and short files", "[convert]") {
  test::ConvertTempDir dir("stream");
  const at::Tensor values = at::arange(1000, at::kFloat);
  {
    io::SafetensorsWriter writer(dir.path(), {});
    writer.add("whole", io::DType::F32, {10}, [] { return at::ones({10}); });
    writer.add_stream("pieces", io::DType::F32, {1000}, [&](const io::SafetensorsWriter::ByteSink& sink) {
      const char* bytes = static_cast<const char*>(values.data_ptr());
      for (size_t offset = 0; offset < 4000; offset += 1500) sink(bytes + offset, std::min<size_t>(1500, 4000 - offset));
    });
    writer.write();
  }
  const io::Checkpoint written = io::Checkpoint::open(dir.path());
  CHECK(at::equal(written.tensor("pieces"), values));
  CHECK(at::equal(written.tensor("whole"), at::ones({10})));
  for (size_t bytes : {size_t{4}, size_t{8}}) {
    test::ConvertTempDir short_dir("stream_short");
    io::SafetensorsWriter writer(short_dir.path(), {});
    writer.add_stream("t", io::DType::F32, {1}, [bytes](const io::SafetensorsWriter::ByteSink& sink) {
      const char zeros[8] = {};
      sink(zeros, bytes);
      sink(zeros, 2);
    });
    CHECK_THROWS_AS(writer.write(), InternalError);
  }
  // add_file_copy: bytes taken from another file at an offset, as they are.
  const io::Checkpoint source = io::Checkpoint::open(dir.path());
  const io::TensorInfo& info = source.info("pieces");
  const auto file = source.files().front()->path();
  const uint64_t offset = source.files().front()->data_start() + info.begin;
  test::ConvertTempDir copy_dir("file_copy");
  {
    io::SafetensorsWriter writer(copy_dir / "", {});
    writer.add_file_copy("copied", io::DType::F32, {1000}, file, offset);
    writer.add_file_copy("tail", io::DType::F32, {10}, file, offset + 3960);
    writer.write();
  }
  const io::Checkpoint copied = io::Checkpoint::open(copy_dir.path());
  CHECK(at::equal(copied.tensor("copied"), values));
  CHECK(at::equal(copied.tensor("tail"), values.narrow(0, 990, 10)));
  test::ConvertTempDir short_dir("file_copy_short");
  io::SafetensorsWriter writer(short_dir.path(), {});
  writer.add_file_copy("past_the_end", io::DType::F32, {1000}, file, offset + 400);
  CHECK_THROWS_WITH(writer.write(), Contains("ended before byte"));
}
