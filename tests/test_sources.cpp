// Config parsing, source resolution and the bad inputs around them.
#include <catch2/catch.hpp>

#include <ATen/Parallel.h>

#include <cstdlib>
#include <unistd.h>
#include <fstream>

#include "io/architecture.h"
#include "io/atomic_dir.h"
#include "io/model_config.h"
#include "io/source.h"
#include "io/synthetic.h"
#include "model/load_model.h"
#include "test_helpers.h"
#include "util/error.h"

using namespace prime;
using Catch::Matchers::Contains;

namespace {

nlohmann::json tiny_config() {
  return nlohmann::json{{"model_type", "qwen3"},     {"architectures", {"Qwen3ForCausalLM"}},
                        {"hidden_size", 64},         {"intermediate_size", 96},
                        {"num_hidden_layers", 2},    {"num_attention_heads", 4},
                        {"num_key_value_heads", 2},  {"head_dim", 32},
                        {"vocab_size", 100},         {"rms_norm_eps", 1e-6},
                        {"rope_theta", 1000000.0},   {"tie_word_embeddings", true}};
}

std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("prime_test_" + name + "_" + std::to_string(::getpid()));
  io::remove_tree(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

TEST_CASE("config: both rope layouts give the same rope", "[config]") {
  auto legacy = tiny_config();
  legacy["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  legacy["rope_theta"] = 500000.0;
  auto modern = tiny_config();
  modern.erase("rope_theta");
  modern["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                               {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                               {"original_max_position_embeddings", 8192}};
  auto a = io::ModelConfig::from_json(legacy, "legacy"), b = io::ModelConfig::from_json(modern, "modern");
  CHECK(a.rope.type == "llama3");
  CHECK(b.rope.type == "llama3");
  CHECK(a.rope.theta == b.rope.theta);
  CHECK(a.rope.factor == b.rope.factor);
  CHECK(a.rope.original_max_position_embeddings == 8192);
  CHECK(a.head_dim == 32);  // explicit head_dim wins over hidden/heads
}

TEST_CASE("config: sliding window per layer as transformers resolves it", "[config]") {
  auto mistral = tiny_config();
  mistral["model_type"] = "mistral";
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["sliding_window"] = 16;
  CHECK(io::ModelConfig::from_json(mistral, "m").attention_window == std::vector<int64_t>{16, 16});
  auto qwen = tiny_config();
  qwen["sliding_window"] = 16;
  CHECK(io::ModelConfig::from_json(qwen, "q").attention_window == std::vector<int64_t>{0, 0});
  qwen["use_sliding_window"] = true;
  qwen["max_window_layers"] = 1;
  CHECK(io::ModelConfig::from_json(qwen, "q").attention_window == std::vector<int64_t>{0, 16});
}

TEST_CASE("config: bad configs are refused with a clear message", "[config][bad-input]") {
  auto unknown = tiny_config();
  unknown["model_type"] = "gpt_neox";
  unknown["architectures"] = {"GPTNeoXForCausalLM"};
  CHECK_THROWS_WITH(io::ModelConfig::from_json(unknown, "x"), Contains("unknown architecture"));
  auto heads = tiny_config();
  heads["num_key_value_heads"] = 3;
  CHECK_THROWS_AS(io::ModelConfig::from_json(heads, "x"), UserError);
  auto rope = tiny_config();
  rope["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  CHECK_THROWS_WITH(io::ModelConfig::from_json(rope, "x"), Contains("longrope"));
  auto missing = tiny_config();
  missing.erase("hidden_size");
  CHECK_THROWS_WITH(io::ModelConfig::from_json(missing, "x"), Contains("hidden_size"));
  auto pattern = tiny_config();
  pattern["hybrid_override_pattern"] = "*-GKA-*";
  CHECK_THROWS_WITH(io::ModelConfig::from_json(pattern, "x"), Contains("num_hidden_layers"));
  pattern["hybrid_override_pattern"] = "*-XYZ";
  CHECK_THROWS_WITH(io::ModelConfig::from_json(pattern, "x"), Contains("unknown layer symbol 'XYZ'"));
}

TEST_CASE("sources: synthetic aliases, overrides, and unknown names", "[source]") {
  auto source = io::resolve_source("synthetic:qwen3-8b");
  CHECK(source.config.num_hidden_layers == 36);
  CHECK(source.config.head_dim == 128);
  CHECK(source.hf_id == "Qwen/Qwen3-8B");
  auto small = io::resolve_source("synthetic:qwen3-8b@layers=2,hidden=64,intermediate=96,vocab=128,seed=3");
  CHECK(small.config.num_hidden_layers == 2);
  CHECK(small.seed == 3);
  CHECK_THROWS_WITH(io::resolve_source("synthetic:qwen3-8b@layerz=2"), Contains("unknown synthetic override"));
  CHECK_THROWS_WITH(io::resolve_source("synthetic:qwen3-8b@layers=two"), Contains("must be an integer"));
  CHECK_THROWS_WITH(io::resolve_source("synthetic:nope"), Contains("unknown model alias"));
  CHECK_THROWS_WITH(io::resolve_source("/no/such/dir"), Contains("neither a directory nor a known model alias"));
  // The exact published configs: parameter counts of a few known models.
  for (const auto& [alias, billions] : std::vector<std::pair<std::string, double>>{
           {"qwen3-8b", 8.19}, {"qwen3-0.6b", 0.596}, {"llama-3.1-8b", 8.03}, {"mistral-7b", 7.24}}) {
    int64_t params = 0;
    for (const auto& spec : io::transformer_tensor_specs(io::resolve_source("synthetic:" + alias).config)) {
      int64_t n = 1;
      for (int64_t dim : spec.shape) n *= dim;
      params += n;
    }
    INFO(alias);
    CHECK(params / 1e9 == Approx(billions).epsilon(0.005));
  }
}

TEST_CASE("sources: synthetic weights depend only on seed and name, drawn per block on any thread count",
          "[source]") {
  // Small tensors keep the single stream they have always had (values from before blocks).
  const at::Tensor small = io::synthetic_tensor("model.layers.0.mlp.up_proj.weight", {3, 4}, 5);
  CHECK(small.flatten()[0].item<float>() == Approx(0.052132).margin(1e-6));
  CHECK(small.flatten()[1].item<float>() == Approx(-0.001484).margin(1e-6));
  CHECK(small.flatten()[3].item<float>() == Approx(0.003360).margin(1e-6));
  // A tensor of three blocks (the last one partial), on one thread and on two.
  const std::vector<int64_t> shape = {3, io::kSyntheticBlock / 2 + 5};
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor one = io::synthetic_tensor("model.embed_tokens.weight", shape, 7);
  at::set_num_threads(2);
  const at::Tensor two = io::synthetic_tensor("model.embed_tokens.weight", shape, 7);
  at::set_num_threads(threads);
  REQUIRE(one.sizes() == at::IntArrayRef(shape));
  CHECK(at::equal(one, two));
  // N(0, 0.02), and the blocks are different streams (not one stream repeated or shifted).
  CHECK(std::abs(one.mean().item<double>()) < 1e-4);
  CHECK(one.std().item<double>() == Approx(0.02).epsilon(0.005));
  const at::Tensor flat = one.flatten();
  const at::Tensor first = flat.narrow(0, 0, 4096), second = flat.narrow(0, io::kSyntheticBlock, 4096);
  CHECK_FALSE(at::equal(first, second));
  const double correlation = (first * second).mean().item<double>() / (0.02 * 0.02);
  CHECK(std::abs(correlation) < 0.1);
  // Another name or seed, another tensor; norms are 1 + N(0, 0.02); a dtype is the fp32 draw rounded.
  CHECK_FALSE(at::equal(one, io::synthetic_tensor("model.embed_tokens.weight", shape, 8)));
  CHECK_FALSE(at::equal(one, io::synthetic_tensor("lm_head.weight", shape, 7)));
  const at::Tensor norm = io::synthetic_tensor("model.norm.weight", shape, 7);
  CHECK(norm.mean().item<double>() == Approx(1.0).margin(1e-4));
  const at::Tensor bf16 = io::synthetic_tensor("model.embed_tokens.weight", shape, 7, at::kBFloat16);
  CHECK(bf16.scalar_type() == at::kBFloat16);
  CHECK(at::equal(bf16, one.to(at::kBFloat16)));
}

TEST_CASE("sources: a known alias is looked up in the HF cache, else the download command is named", "[source]") {
  auto cache = temp_dir("hfcache");
  const test::ScopedEnv cache_env("HF_HUB_CACHE", cache.c_str());
  CHECK_THROWS_WITH(io::resolve_source("qwen3-0.6b"), Contains("hf download Qwen/Qwen3-0.6B"));
  // Lay out a snapshot like huggingface_hub does, pointing at a tiny fixture's files.
  auto repo = cache / "models--Qwen--Qwen3-0.6B";
  std::filesystem::create_directories(repo / "refs");
  std::filesystem::create_directories(repo / "snapshots" / "abc123");
  std::ofstream(repo / "refs" / "main") << "abc123";
  for (const char* file : {"config.json", "model.safetensors"})
    std::filesystem::create_symlink(test::fixtures_dir() / "parity" / "qwen3_tied" / file,
                                    repo / "snapshots" / "abc123" / file);
  auto source = io::resolve_source("qwen3-0.6b");
  CHECK(source.kind == "alias");
  CHECK(source.revision == "abc123");
  auto loaded = model::load_model("qwen3-0.6b", {});
  CHECK(loaded.model->num_layers() == source.config.num_hidden_layers);
  io::remove_tree(cache);
}

TEST_CASE("sources: config/weights disagreement names the tensor", "[source][bad-input]") {
  auto dir = temp_dir("disagree");
  auto fixture = test::fixtures_dir() / "parity" / "qwen3_tied";
  std::filesystem::copy_file(fixture / "model.safetensors", dir / "model.safetensors");
  std::ifstream in(fixture / "config.json");
  auto config = nlohmann::json::parse(in);
  config["intermediate_size"] = config["intermediate_size"].get<int>() + 8;
  std::ofstream(dir / "config.json") << config.dump();
  CHECK_THROWS_WITH(model::load_model(dir.string(), {}), Contains("mlp.gate_proj.weight") && Contains("shape"));
  config = nlohmann::json::parse(std::ifstream(fixture / "config.json"));
  config["tie_word_embeddings"] = false;  // now lm_head.weight is required and absent
  std::ofstream(dir / "config.json") << config.dump();
  CHECK_THROWS_WITH(model::load_model(dir.string(), {}), Contains("missing tensor lm_head.weight"));
  std::filesystem::remove(dir / "config.json");
  CHECK_THROWS_WITH(model::load_model(dir.string(), {}), Contains("has no config.json"));
  io::remove_tree(dir);
}
