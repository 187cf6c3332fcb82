// prime-convert's layer plan: ratio rounding, placements, explicit lists, patterns, scores, and
// every bad value among them.
#include <catch2/catch.hpp>

#include "convert/plan.h"
#include "test_convert_util.h"
#include "util/error.h"

using namespace prime;
using namespace prime::convert;
using Catch::Matchers::Contains;

namespace {

std::string user_error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const UserError& error) {
    return error.what();
  }
  return "(no UserError)";
}

std::vector<int64_t> range(int64_t from, int64_t to) {
  std::vector<int64_t> values;
  for (int64_t i = from; i < to; ++i) values.push_back(i);
  return values;
}

}  // namespace

TEST_CASE("convert plan: ratio rounding is round(L*A/(A+S)) with halves up, at least 1", "[convert]") {
  CHECK(attention_layer_count(36, parse_ratio("1:3")) == 9);
  CHECK(attention_layer_count(36, parse_ratio("1:1")) == 18);
  CHECK(attention_layer_count(3, parse_ratio("1:1")) == 2);   // 1.5 rounds up
  CHECK(attention_layer_count(5, parse_ratio("1:4")) == 1);
  CHECK(attention_layer_count(28, parse_ratio("1:7")) == 4);
  CHECK(attention_layer_count(6, parse_ratio("1:10")) == 1);  // 0.55 -> 1
  CHECK(attention_layer_count(10, parse_ratio("1:30")) == 1); // 0.32 -> 0, but at least 1 when A > 0
  CHECK(attention_layer_count(36, parse_ratio("0:1")) == 0);  // all SSM
  CHECK(attention_layer_count(36, parse_ratio(" 2 : 6 ")) == 9);
  CHECK_THAT(user_error_of([] { attention_layer_count(2, parse_ratio("3:1")); }), Contains("cannot be met with 2 layers"));
  CHECK_THAT(user_error_of([] { attention_layer_count(1, parse_ratio("1:3")); }), Contains("cannot be met"));
  // A:0, an all-'*' pattern and --keep-attention of every layer mean the same: all attention.
  CHECK(attention_layer_count(4, parse_ratio("1:0")) == 4);
  CHECK(plan_layers(3, {"GDN", "1:0", "", "", "", ""}).count("*") == 3);
  CHECK(plan_layers(3, {"", "", "", "", "*-*-*", ""}).count("*") == 3);
  for (const char* bad : {"", "1", "1:", ":3", "a:b", "1:3:4", "-1:3", "1.5:3", "1/3"})
    CHECK_THAT(user_error_of([&] { parse_ratio(bad); }), Contains("malformed"));
  CHECK_THAT(user_error_of([] { parse_ratio("0:0"); }), Contains("0:0"));
}

TEST_CASE("convert plan: uniform and middle placements", "[convert]") {
  CHECK(uniform_placement(36, 9) == std::vector<int64_t>{2, 6, 10, 14, 18, 22, 26, 30, 34});
  CHECK(uniform_placement(36, 18) == std::vector<int64_t>{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35});
  CHECK(uniform_placement(10, 3) == std::vector<int64_t>{1, 5, 8});
  CHECK(uniform_placement(4, 1) == std::vector<int64_t>{2});
  CHECK(middle_placement(36, 9) == range(13, 22));
  CHECK(middle_placement(5, 2) == std::vector<int64_t>{1, 2});
  for (int64_t layers : {2, 7, 36, 48})
    for (int64_t kept = 1; kept < layers; ++kept) {
      auto uniform = uniform_placement(layers, kept);
      REQUIRE(static_cast<int64_t>(uniform.size()) == kept);
      for (size_t i = 1; i < uniform.size(); ++i) CHECK(uniform[i] > uniform[i - 1]);
      CHECK(uniform.back() < layers);
    }

  const auto plan = plan_layers(36, {"GKA", "1:3", "", "", "", ""});
  CHECK(plan.method == "uniform");
  CHECK(plan.count("*") == 9);
  CHECK(plan.count("GKA") == 27);
  CHECK(plan.attention_layers() == uniform_placement(36, 9));
  CHECK(plan.pattern().substr(0, 16) == "GKA-GKA-*-GKA-GK");
  const auto middle = plan_layers(36, {"m2", "1:3", "middle", "", "", ""});
  CHECK(middle.attention_layers() == range(13, 22));
  CHECK(middle.count("M2") == 27);
  CHECK(plan_layers(4, {"GDN", "0:1", "", "", "", ""}).count("GDN") == 4);
}

TEST_CASE("convert plan: --keep-attention and --pattern", "[convert]") {
  auto plan = plan_layers(8, {"GDN", "", "", "6, 1", "", ""});
  CHECK(plan.method == "keep-attention");
  CHECK(plan.attention_layers() == std::vector<int64_t>{1, 6});
  CHECK(plan.pattern() == "GDN-*-GDN-GDN-GDN-GDN-*-GDN");
  CHECK(plan_layers(8, {"GDN", "1:3", "", "1,6", "", ""}).count("*") == 2);  // consistent ratio is fine
  CHECK_THAT(user_error_of([] { plan_layers(8, {"GDN", "1:1", "", "1,6", "", ""}); }), Contains("means 4 attention layers"));
  CHECK_THAT(user_error_of([] { plan_layers(8, {"GDN", "", "", "1,8", "", ""}); }), Contains("layer 8 is out of range"));
  CHECK_THAT(user_error_of([] { plan_layers(8, {"GDN", "", "", "-1", "", ""}); }), Contains("out of range"));
  CHECK_THAT(user_error_of([] { plan_layers(8, {"GDN", "", "", "2,2", "", ""}); }), Contains("listed twice"));
  CHECK_THAT(user_error_of([] { plan_layers(8, {"GDN", "", "", "2,x", "", ""}); }), Contains("'x' is not a layer index"));
  CHECK(plan_layers(2, {"GDN", "", "", "0,1", "", ""}).count("*") == 2);

  plan = plan_layers(4, {"", "", "", "", "*-GKA-M2-SWA", ""});
  CHECK(plan.method == "pattern");
  CHECK(plan.types == std::vector<std::string>{"*", "GKA", "M2", "SWA"});
  CHECK(plan_layers(2, {"", "", "", "", "*-*", ""}).count("*") == 2);  // all attention: an identity conversion
  CHECK_THAT(user_error_of([] { plan_layers(4, {"", "", "", "", "*-GKA-GKA", ""}); }),
             Contains("--pattern has 3 layers but the source has 4"));
  CHECK_THAT(user_error_of([] { plan_layers(2, {"", "", "", "", "*-LSTM", ""}); }), Contains("unknown layer symbol 'LSTM'"));
  CHECK_THAT(user_error_of([] { plan_layers(2, {"GKA", "", "", "", "*-GKA", ""}); }), Contains("drop --layer"));
  CHECK_THAT(user_error_of([] { plan_layers(4, {"GKA", "1:1", "middle", "1", "", ""}); }), Contains("choose one of"));
  CHECK_THAT(user_error_of([] { plan_layers(4, {"GKA", "1:1", "spread", "", "", ""}); }), Contains("unknown --placement"));
  CHECK_THAT(user_error_of([] { plan_layers(4, {"", "1:1", "", "", "", ""}); }), Contains("--layer is required"));
  CHECK_THAT(user_error_of([] { plan_layers(4, {"GKA", "", "", "", "", ""}); }), Contains("--ratio A:S is required"));
  CHECK_THAT(user_error_of([] { plan_layers(4, {"LSTM", "1:1", "", "", "", ""}); }), Contains("unknown --layer 'LSTM'"));
}

TEST_CASE("convert plan: scores keep the lowest-scoring layers as attention", "[convert]") {
  // layer,score with a header; higher = safer to replace.
  auto scores = parse_layer_scores("layer,score\n0,0.9\n1,0.1\n2,0.5\n3,0.1\n", 4, "s.csv");
  CHECK(scores.format == "layer,score");
  CHECK(scores.scores == std::vector<double>{0.9, 0.1, 0.5, 0.1});
  CHECK(lowest_scoring_layers(scores, 1) == std::vector<int64_t>{1});  // tie 1 vs 3: the lower index
  CHECK(lowest_scoring_layers(scores, 3) == std::vector<int64_t>{1, 2, 3});
  // No header, comments, blank lines, any row order.
  scores = parse_layer_scores("# scores\n2,3\n\n0,1\n1,2\n", 3, "s.csv");
  CHECK(scores.scores == std::vector<double>{1, 2, 3});
  // HMF importance CSV: baseline row -1, task columns averaged.
  scores = parse_layer_scores("layer_num,task_a::suite,task_b::suite\n-1,0.5,0.7\n0,0.2,0.4\n1,0.6,0.6\n2,0.1,0.9\n", 3,
                              "importance.csv");
  CHECK(scores.columns == std::vector<std::string>{"task_a::suite", "task_b::suite"});
  CHECK(scores.baseline.value() == Approx(0.6));
  CHECK(scores.scores[0] == Approx(0.3));
  CHECK(scores.scores[2] == Approx(0.5));
  CHECK_THAT(scores.format, Contains("mean of 2 task columns"));

  CHECK_THAT(user_error_of([] { parse_layer_scores("0,1\n2,1\n", 4, "s.csv"); }), Contains("no score for layer(s) 1,3"));
  CHECK_THAT(user_error_of([] { parse_layer_scores("0,1\n0,2\n1,1\n", 2, "s.csv"); }), Contains("second score"));
  CHECK_THAT(user_error_of([] { parse_layer_scores("0,1\n1,abc\n", 2, "s.csv"); }), Contains("s.csv:2: 'abc' is not a finite number"));
  CHECK_THAT(user_error_of([] { parse_layer_scores("0,1\n5,1\n", 2, "s.csv"); }), Contains("out of range"));
  CHECK_THAT(user_error_of([] { parse_layer_scores("0,1,2\n1,1\n", 2, "s.csv"); }), Contains("expected 3 columns"));
  CHECK_THAT(user_error_of([] { read_layer_scores("/nonexistent/scores.csv", 2); }), Contains("cannot read scores file"));
}

TEST_CASE("convert plan: --scores with HMF's published Qwen3-8B ranking keeps the sensitive middle", "[convert]") {
  // design/ssm-layers.md: Qwen3-8B layers ranked most-replaceable first.
  const std::vector<int64_t> ranking = {27, 1,  3,  11, 26, 2,  32, 34, 5,  9,  6,  28, 4,  35, 31, 33, 10, 30,
                                        23, 25, 29, 22, 0,  14, 12, 8,  7,  18, 20, 16, 24, 17, 21, 19, 13, 15};
  std::string csv = "layer,score\n";
  for (size_t rank = 0; rank < ranking.size(); ++rank)
    csv += std::to_string(ranking[rank]) + "," + std::to_string(100 - static_cast<int>(rank)) + "\n";
  test::ConvertTempDir dir("scores");
  std::ofstream(dir / "scores.csv") << csv;
  const auto plan = plan_layers(36, {"GKA", "1:1", "", "", "", (dir / "scores.csv").string()});
  CHECK(plan.method == "scores");
  std::vector<int64_t> expected(ranking.begin() + 18, ranking.end());
  std::sort(expected.begin(), expected.end());
  CHECK(plan.attention_layers() == expected);
  CHECK(plan.types[15] == "*");
  CHECK(plan.types[27] == "GKA");
  CHECK_THAT(user_error_of([] { plan_layers(36, {"GKA", "", "", "", "", "x.csv"}); }), Contains("--ratio A:S is required"));
}
