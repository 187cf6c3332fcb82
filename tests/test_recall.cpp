// Recall probes: sequences are deterministic given a seed and laid out as documented; a model
// that copies perfectly scores 100% (an exact copier, and a 2-layer attention-only Llama with
// hand-set weights: a previous-token head + an induction head); a random model scores near chance.
#include <catch2/catch.hpp>

#include <cmath>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "eval/mqar.h"
#include "eval/needle.h"
#include "io/architecture.h"
#include "model/load_model.h"
#include "test_data_util.h"
#include "util/error.h"

using namespace prime;
using Catch::Matchers::Contains;

namespace {

// The ideal induction head as a "model": at each position, predict the token that followed the
// previous occurrence of the current token.
eval::LogitsFn exact_copier(int64_t vocab) {
  return [vocab](const at::Tensor& ids) {
    at::Tensor logits = at::zeros({ids.size(0), ids.size(1), vocab});
    const auto tokens = ids.accessor<int64_t, 2>();
    auto out = logits.accessor<float, 3>();
    for (int64_t b = 0; b < ids.size(0); ++b) {
      std::unordered_map<int64_t, int64_t> last_seen;
      for (int64_t t = 0; t < ids.size(1); ++t) {
        auto found = last_seen.find(tokens[b][t]);
        if (found != last_seen.end()) out[b][t][tokens[b][found->second + 1]] = 1;
        last_seen[tokens[b][t]] = t;
      }
    }
    return logits;
  };
}

// A 2-layer attention-only Llama (MLPs zero) that copies. Residual stream [token | previous token
// | copied], V dims each. Layer 1 is a previous-token head built from RoPE alone: constant q and
// k whose score sum_p cos(theta_p (i - j - 1)) peaks at j = i - 1 on the fast rotary pairs; it
// writes the previous token into the second slot. Layer 2 is an induction head on rotary pairs so
// slow (rope_theta 1e15) that they barely turn: query = current token, key = previous token minus
// own token (so position 0, whose "previous" is itself, never matches); it copies the matched
// position's token into the third slot, which the LM head reads.
std::unique_ptr<model::HybridModel> induction_model(int64_t vocab) {
  const int64_t V = vocab, d = 3 * V, h = 256, half = h / 2, fast_pairs = 16, content_pair = 32;
  nlohmann::json raw = {{"model_type", "llama"},       {"architectures", {"LlamaForCausalLM"}},
                        {"hidden_size", d},            {"intermediate_size", 8},
                        {"num_hidden_layers", 2},      {"num_attention_heads", 1},
                        {"num_key_value_heads", 1},    {"head_dim", h},
                        {"vocab_size", V},             {"max_position_embeddings", 4096},
                        {"rms_norm_eps", 1e-6},        {"rope_theta", 1e15},
                        {"tie_word_embeddings", false}, {"hidden_act", "silu"}};
  const auto config = io::ModelConfig::from_json(raw, "induction toy");
  REQUIRE(content_pair + V <= half);
  const double r = std::sqrt(double(d));  // RMSNorm scales a one-hot of size r back to r
  model::TensorMap w;
  auto zeros = [](std::vector<int64_t> shape) { return at::zeros(shape); };
  w["model.embed_tokens.weight"] = zeros({V, d});
  w["lm_head.weight"] = zeros({V, d});
  w["model.norm.weight"] = at::ones({d});
  for (int64_t x = 0; x < V; ++x) {
    w["model.embed_tokens.weight"][x][x] = r;
    w["lm_head.weight"][x][2 * V + x] = 1;
  }
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    w[p + "input_layernorm.weight"] = at::ones({d});
    w[p + "post_attention_layernorm.weight"] = at::ones({d});
    w[p + "mlp.gate_proj.weight"] = zeros({8, d});
    w[p + "mlp.up_proj.weight"] = zeros({8, d});
    w[p + "mlp.down_proj.weight"] = zeros({d, 8});
    w[p + "self_attn.q_proj.weight"] = zeros({h, d});
    w[p + "self_attn.k_proj.weight"] = zeros({h, d});
    w[p + "self_attn.v_proj.weight"] = zeros({h, d});
    w[p + "self_attn.o_proj.weight"] = zeros({d, h});
  }
  auto q1 = w["model.layers.0.self_attn.q_proj.weight"], k1 = w["model.layers.0.self_attn.k_proj.weight"];
  auto v1 = w["model.layers.0.self_attn.v_proj.weight"], o1 = w["model.layers.0.self_attn.o_proj.weight"];
  const double base = 1e15;
  for (int64_t pair = 0; pair < fast_pairs; ++pair) {
    const double theta = std::pow(base, -2.0 * pair / h);
    // q = a, k = b e^{i theta}: the score of key j for query i is a b cos(theta (i - j - 1)).
    q1.select(0, pair).narrow(0, 0, V).fill_(std::sqrt(3.0));
    k1.select(0, pair).narrow(0, 0, V).fill_(std::sqrt(3.0) * std::cos(theta));
    k1.select(0, pair + half).narrow(0, 0, V).fill_(std::sqrt(3.0) * std::sin(theta));
  }
  auto q2 = w["model.layers.1.self_attn.q_proj.weight"], k2 = w["model.layers.1.self_attn.k_proj.weight"];
  auto v2 = w["model.layers.1.self_attn.v_proj.weight"], o2 = w["model.layers.1.self_attn.o_proj.weight"];
  for (int64_t x = 0; x < V; ++x) {
    v1[x][x] = 1;          // value: the token
    o1[V + x][x] = 1;      // -> previous-token slot
    q2[content_pair + x][x] = std::sqrt(7.0);          // query: current token
    k2[content_pair + x][V + x] = std::sqrt(7.0);      // key: previous token ...
    k2[content_pair + x][x] = -std::sqrt(7.0);         // ... minus own token
    v2[x][x] = 1;          // value: the token there
    o2[2 * V + x][x] = 1;  // -> copied slot
  }
  return std::make_unique<model::HybridModel>(config, w);
}

eval::NeedleOptions small_needle() {
  eval::NeedleOptions options;
  options.lengths = {24, 48};
  options.depths = {0, 0.5, 1};
  options.trials = 6;
  options.key_tokens = 2;
  options.value_tokens = 3;
  options.seed = 7;
  return options;
}

eval::MqarOptions small_mqar() {
  eval::MqarOptions options;
  options.pairs = {2, 6, 20};
  options.lengths = {32, 48};
  options.trials = 4;
  options.seed = 7;
  return options;
}

}  // namespace

TEST_CASE("recall probes: deterministic given a seed, laid out as documented", "[recall]") {
  const eval::ProbeVocabulary vocabulary(nullptr, 300, 0);
  auto options = small_needle();
  const auto a = eval::needle_sequences(vocabulary, 48, 0.5, options);
  const auto b = eval::needle_sequences(vocabulary, 48, 0.5, options);
  options.seed = 8;
  const auto c = eval::needle_sequences(vocabulary, 48, 0.5, options);
  REQUIRE(a.size() == 6);
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].ids == b[i].ids);
    CHECK(a[i].targets == b[i].targets);
    CHECK(a[i].ids.size() == 48);
    // Teacher forcing: every target but the last is the next input; the value follows the key.
    for (size_t k = 0; k + 1 < a[i].positions.size(); ++k) CHECK(a[i].ids[a[i].positions[k] + 1] == a[i].targets[k]);
    CHECK(a[i].positions.back() == 47);
  }
  CHECK(a[0].ids != c[0].ids);
  // Depth 0.5: the key sits halfway through the filler (F = 48 - 2*5 + 1 = 39, at = 20).
  CHECK(a[0].ids[20] == a[0].ids[44]);  // needle key[0] == query key[0] (20 + 5 + 19)
  const auto m1 = eval::mqar_sequences(vocabulary, 6, 32, small_mqar());
  const auto m2 = eval::mqar_sequences(vocabulary, 6, 32, small_mqar());
  CHECK(m1[3].ids == m2[3].ids);
  CHECK(m1[3].positions.size() == 6);
  CHECK_THROWS_AS(eval::mqar_sequences(vocabulary, 20, 32, small_mqar()), UserError);
  CHECK_THROWS_AS(eval::needle_sequences(vocabulary, 8, 0.5, small_needle()), UserError);
}

TEST_CASE("recall probes: an exact copier scores 100%", "[recall]") {
  const eval::ProbeVocabulary vocabulary(nullptr, 300, 0);
  const auto needle = eval::run_needle(exact_copier(300), vocabulary, small_needle());
  for (const auto& cell : needle.cells) CHECK(cell.accuracy() == 1.0);
  const auto mqar = eval::run_mqar(exact_copier(300), vocabulary, small_mqar());
  for (const auto& cell : mqar.cells) CHECK((cell.skipped || cell.accuracy() == 1.0));
  CHECK(mqar.cells[4].skipped);  // 20 pairs need 80 tokens
  std::ostringstream table;
  eval::print_needle_table(needle, table);
  eval::print_mqar_table(mqar, table);
  CHECK_THAT(table.str(), Contains("100.0%"));
  // The skipped cell is said so, in the table and the JSON.
  CHECK_THAT(table.str(), Contains("(-: a length below 4 x pairs"));
  const auto json = eval::to_json(mqar);
  REQUIRE(json["skipped"].size() >= 1);
  CHECK(json["skipped"][0]["pairs"] == mqar.cells[4].pairs);
}

TEST_CASE("recall probes: a hand-built 2-layer induction model scores 100%, a random model near chance",
          "[recall]") {
  auto toy = induction_model(64);
  const eval::ProbeVocabulary vocabulary(nullptr, 64, 0);
  const auto needle = eval::run_needle(eval::model_logits(*toy), vocabulary, small_needle());
  for (const auto& cell : needle.cells) {
    INFO("length " << cell.length << " depth " << cell.depth);
    CHECK(cell.accuracy() == 1.0);
  }
  const auto mqar = eval::run_mqar(eval::model_logits(*toy), vocabulary, small_mqar());
  for (const auto& cell : mqar.cells) {
    INFO("pairs " << cell.pairs << " length " << cell.length);
    CHECK((cell.skipped || cell.accuracy() == 1.0));
  }

  auto random = model::load_model(test::tiny_model(300), {});
  const eval::ProbeVocabulary wide(nullptr, 300, 0);
  const auto guessed = eval::run_needle(eval::model_logits(*random.model), wide, small_needle());
  int64_t correct = 0, total = 0;
  for (const auto& cell : guessed.cells) correct += cell.tokens_correct, total += cell.tokens_total;
  CHECK(double(correct) / total < 0.05);  // chance is ~1/290 per token
  const auto guessed_mqar = eval::run_mqar(eval::model_logits(*random.model), wide, small_mqar());
  for (const auto& cell : guessed_mqar.cells) CHECK(cell.accuracy() < 0.2);
}

TEST_CASE("recall probes draw filler and ids from a shard, prime-eval --recall end to end", "[recall][cli]") {
  test::ScratchDir dir("recall");
  io::TokenShardHeader header;
  header.width = 2;
  header.vocab_size = 300;
  header.eos_id = 0;
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 3000; ++i) ids.push_back(i % 50 == 49 ? 0 : 1 + (i * 131) % 299);
  {
    io::TokenShardWriter writer(dir.file("hay.tok"), header);
    writer.append(ids);
    writer.finish();
  }
  const auto shard = io::TokenShard::open(dir.file("hay.tok"));
  const eval::ProbeVocabulary vocabulary(&shard, 300, 3);
  const auto sequences = eval::needle_sequences(vocabulary, 48, 0.25, small_needle());
  for (const auto& sequence : sequences)
    for (int64_t target : sequence.targets) CHECK(target != 0);  // never EOS
  CHECK(eval::run_needle(exact_copier(300), vocabulary, small_needle()).cells[0].accuracy() == 1.0);
  CHECK_THROWS_WITH(eval::ProbeVocabulary(&shard, 100, 3), Contains("vocabulary is 100"));

  auto result = test::run_cli("prime-eval --model '" + test::tiny_model(300) + "' --device cpu --recall --haystack " +
                              dir.file("hay.tok") + " --needle-lengths 32 --needle-depths 0,1 --mqar-pairs 2,4 " +
                              "--mqar-lengths 32 --trials 2 --json " + dir.file("r.json"));
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("needle in a haystack"));
  CHECK_THAT(result.output, Contains("MQAR"));
  const auto json = nlohmann::json::parse(test::read_bytes(dir.file("r.json")));
  CHECK(json["needle"]["cells"].size() == 2);
  CHECK(json["mqar"]["cells"].size() == 2);
  result = test::run_cli("prime-eval --model '" + test::tiny_model(300) + "' --recall --haystack " + dir.file("none.tok"));
  CHECK(result.exit_code == 1);
}
