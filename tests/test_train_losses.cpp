// The training losses, schedule, optimizer and parameter groups against independent float64
// computations.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "io/source.h"
#include "test_helpers.h"
#include "train/adamw.h"
#include "train/losses.h"
#include "train/parameters.h"
#include "train/schedule.h"
#include "train/train_options.h"
#include "util/error.h"
#include "util/metrics.h"

using namespace prime;
using namespace prime::train;

namespace {

// Plain autograd over the full [N, V] logits in float64: the reference for the chunked loss.
at::Tensor reference_lm_loss(const at::Tensor& hidden, const at::Tensor& head, const at::Tensor& teacher_hidden,
                             const at::Tensor& teacher_head, const at::Tensor& targets, double kl_weight,
                             double ce_weight, double temperature) {
  at::Tensor loss = at::zeros({}, hidden.options());
  const at::Tensor z = at::matmul(hidden, head.t());
  if (kl_weight != 0) {
    const at::Tensor log_p_t = at::log_softmax(at::matmul(teacher_hidden, teacher_head.t()) / temperature, -1);
    const at::Tensor log_p_s = at::log_softmax(z / temperature, -1);
    loss = loss + kl_weight * temperature * temperature * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean();
  }
  if (ce_weight != 0) {
    const at::Tensor scored = targets.ne(kIgnoreTarget);
    const at::Tensor nll = -at::log_softmax(z, -1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1);
    loss = loss + ce_weight * (nll * scored).sum() / scored.sum();
  }
  return loss;
}

}  // namespace

TEST_CASE("chunked LM loss and its gradients equal full-vocabulary autograd (float64)", "[train]") {
  at::manual_seed(11);
  const int64_t tokens = 37, dim = 12, vocab = 50;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor teacher_hidden = at::randn({tokens, dim}, f64), teacher_head = at::randn({vocab, dim}, f64);
  at::Tensor targets = at::randint(0, vocab, {tokens}, at::kLong);
  targets.index_put_({at::arange(0, tokens, 5)}, kIgnoreTarget);
  struct Case {
    double kl, ce, temperature;
  };
  for (const Case& c : {Case{1, 0, 1}, Case{0, 1, 1}, Case{1, 0.5, 2.0}, Case{0.7, 0, 0.5}}) {
    for (int64_t chunk : {int64_t{8}, int64_t{37}, int64_t{100}}) {
      CAPTURE(c.kl, c.ce, c.temperature, chunk);
      const at::Tensor hidden = at::randn({tokens, dim}, f64).requires_grad_(true);
      const at::Tensor head = at::randn({vocab, dim}, f64).requires_grad_(true);
      LmLossOptions options;
      options.kl_weight = c.kl, options.ce_weight = c.ce, options.temperature = c.temperature;
      options.chunk_tokens = chunk;
      LmLossParts parts;
      // Our loss computes logits in fp32: feed it fp32 copies of the same values.
      const at::Tensor hidden32 = hidden.detach().to(at::kFloat).requires_grad_(true);
      const at::Tensor head32 = head.detach().to(at::kFloat).requires_grad_(true);
      const at::Tensor ours = chunked_lm_loss(hidden32, head32, teacher_hidden.to(at::kFloat),
                                              teacher_head.to(at::kFloat), targets, options, &parts);
      ours.backward();
      const at::Tensor expected =
          reference_lm_loss(hidden, head, teacher_hidden, teacher_head, targets, c.kl, c.ce, c.temperature);
      expected.backward();
      CHECK(std::abs(ours.item<double>() - expected.item<double>()) <= 1e-5 * std::abs(expected.item<double>()));
      CHECK(prime::test::relative_error(hidden32.grad(), hidden.grad()) < 1e-5);
      CHECK(prime::test::relative_error(head32.grad(), head.grad()) < 1e-5);
      CHECK(parts.tokens == tokens);
      if (c.ce != 0) CHECK(parts.targets == targets.ne(kIgnoreTarget).sum().item<int64_t>());
    }
  }
}

TEST_CASE("normalized MSE divides each token by the teacher's variance and treats it as a constant", "[train]") {
  at::manual_seed(3);
  const at::Tensor teacher = at::randn({2, 5, 8}, at::kDouble) * 3 + 1;
  const at::Tensor student = (teacher + 0.1 * at::randn_like(teacher)).requires_grad_(true);
  const at::Tensor loss = normalized_mse(student, teacher);
  double expected = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 5; ++t) {
      const at::Tensor h = teacher[b][t];
      const double variance = (h - h.mean()).pow(2).mean().item<double>();
      expected += (student[b][t].detach() - h).pow(2).mean().item<double>() / variance / 10;
    }
  CHECK(loss.item<double>() == Approx(expected).epsilon(1e-6));
  // Split in two halves, the mean of the halves' losses is the whole batch's.
  const double halves = 0.5 * (normalized_mse(student.narrow(0, 0, 1), teacher.narrow(0, 0, 1)).item<double>() +
                               normalized_mse(student.narrow(0, 1, 1), teacher.narrow(0, 1, 1)).item<double>());
  CHECK(halves == Approx(loss.item<double>()).epsilon(1e-6));
  loss.backward();
  CHECK(student.grad().defined());
}

TEST_CASE("learning-rate schedules: warm-up, cosine to the floor, WSD decay", "[train]") {
  Schedule schedule;
  schedule.lr = 1.0;
  schedule.warmup_steps = 4;
  schedule.total_steps = 104;
  schedule.min_lr_ratio = 0.1;
  schedule.kind = ScheduleKind::Cosine;
  CHECK(schedule.at(0) == Approx(0.25));
  CHECK(schedule.at(3) == Approx(1.0));
  CHECK(schedule.at(4) == Approx(1.0));
  CHECK(schedule.at(54) == Approx(0.55));  // half-way: the mean of peak and floor
  CHECK(schedule.at(104) == Approx(0.1));
  schedule.kind = ScheduleKind::Wsd;
  schedule.decay_fraction = 0.2;
  CHECK(schedule.at(50) == Approx(1.0));
  CHECK(schedule.at(84) == Approx(1.0));
  CHECK(schedule.at(94) == Approx(0.55));
  CHECK(schedule.at(104) == Approx(0.1));
  schedule.kind = ScheduleKind::Constant;
  CHECK(schedule.at(100) == Approx(1.0));
  CHECK_THROWS_AS(parse_schedule("linear"), UserError);
}

namespace {

// AdamW on `device` against the update rule in float64 (a decayed weight and an undecayed gain,
// three steps), then a restored optimizer's next step against the original's.
void check_adamw_rule(const at::Device& device) {
  at::manual_seed(5);
  const at::Tensor start = at::randn({4, 3}).to(device);
  const at::Tensor norm_start = at::randn({3}).to(device);
  TrainedParameter weight{"w", ParamGroup::Ssm, start.clone().requires_grad_(true), true};
  TrainedParameter gain{"n", ParamGroup::Norm, norm_start.clone().requires_grad_(true), false};
  AdamWOptions options;
  options.weight_decay = 0.1;
  AdamW optimizer({weight, gain}, options);
  at::Tensor w = start.to(at::kDouble), n = norm_start.to(at::kDouble);
  at::Tensor m_w = at::zeros_like(w), v_w = at::zeros_like(w), m_n = at::zeros_like(n), v_n = at::zeros_like(n);
  const double lrs[] = {1e-2, 5e-3, 2e-3};
  for (int step = 1; step <= 3; ++step) {
    const at::Tensor grad_w = at::randn({4, 3}).to(device), grad_n = at::randn({3}).to(device);
    weight.tensor.mutable_grad() = grad_w.clone();
    gain.tensor.mutable_grad() = grad_n.clone();
    optimizer.step(lrs[step - 1]);
    const double lr = lrs[step - 1], c1 = 1 - std::pow(0.9, step), c2 = 1 - std::pow(0.95, step);
    auto update = [&](at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g, bool decay) {
      if (decay) p = p * (1 - lr * 0.1);
      m = 0.9 * m + 0.1 * g.to(at::kDouble);
      v = 0.95 * v + 0.05 * g.to(at::kDouble).pow(2);
      p = p - lr * (m / c1) / ((v / c2).sqrt() + 1e-8);
    };
    update(w, m_w, v_w, grad_w, true);
    update(n, m_n, v_n, grad_n, false);
  }
  CHECK(prime::test::relative_error(weight.tensor.detach(), w) < 1e-6);
  CHECK(prime::test::relative_error(gain.tensor.detach(), n) < 1e-6);
  // The state round-trips: a fresh optimizer loaded from it takes the same next step.
  AdamW restored({{"w", ParamGroup::Ssm, weight.tensor.detach().clone().requires_grad_(true), true},
                  {"n", ParamGroup::Norm, gain.tensor.detach().clone().requires_grad_(true), false}},
                 options);
  restored.load_state(optimizer.state());
  CHECK(restored.steps() == 3);
  const at::Tensor grad_w = at::randn({4, 3}).to(device), grad_n = at::randn({3}).to(device);
  for (AdamW* each : {&optimizer, &restored}) {
    each->parameters()[0].tensor.mutable_grad() = grad_w.clone();
    each->parameters()[1].tensor.mutable_grad() = grad_n.clone();
    each->step(1e-3);
  }
  CHECK(at::equal(optimizer.parameters()[0].tensor, restored.parameters()[0].tensor));
  CHECK(at::equal(optimizer.parameters()[1].tensor, restored.parameters()[1].tensor));
  model::TensorMap wrong = optimizer.state();
  wrong["exp_avg.w"] = at::zeros({2});
  CHECK_THROWS_AS(restored.load_state(wrong), UserError);
}

}  // namespace

TEST_CASE("AdamW matches the update rule computed by hand in float64", "[train]") { check_adamw_rule(at::kCPU); }

TEST_CASE("AdamW on CUDA matches the update rule computed by hand in float64", "[train][gpu]") {
  if (!prime::test::gpu_available_or_fail()) return;
  check_adamw_rule(at::Device(at::kCUDA, 0));
}

TEST_CASE("parameter groups of a hybrid: every tensor has one, flags parse, decay skips gains", "[train]") {
  CHECK(parse_groups("all").size() == 6);
  CHECK(groups_string(parse_groups("norm,ssm")) == "ssm,norm");
  CHECK_THROWS_WITH(parse_groups("ssm,mlps"), Catch::Contains("unknown parameter group 'mlps'"));
  CHECK_THROWS_AS(parse_groups(""), UserError);
  CHECK(parse_count("256K", "--batch-tokens") == 262144);
  CHECK(parse_count("1.5M", "--tokens") == 1572864);
  CHECK(parse_count("4096", "--seq-len") == 4096);
  CHECK_THROWS_WITH(parse_count("12Q", "--tokens"), Catch::Contains("--tokens"));
  CHECK_THROWS_AS(parse_count("-5", "--tokens"), UserError);

  io::ModelConfig config = io::resolve_source("synthetic:qwen3-0.6b@layers=4").config;
  config.layer_pattern = {"GKA", "*", "GDN", "SWA"};
  CHECK(classify(config, "model.embed_tokens.weight") == ParamGroup::Embed);
  CHECK(classify(config, "lm_head.weight") == ParamGroup::Head);
  CHECK(classify(config, "model.norm.weight") == ParamGroup::Norm);
  CHECK(classify(config, "model.layers.0.gka.q_proj.weight") == ParamGroup::Ssm);
  CHECK(classify(config, "model.layers.1.self_attn.q_proj.weight") == ParamGroup::Attn);
  CHECK(classify(config, "model.layers.1.self_attn.q_norm.weight") == ParamGroup::Attn);
  CHECK(classify(config, "model.layers.2.gdn.A_log") == ParamGroup::Ssm);
  CHECK(classify(config, "model.layers.3.swa.k_proj.weight") == ParamGroup::Ssm);
  CHECK(classify(config, "model.layers.3.mlp.up_proj.weight") == ParamGroup::Mlp);
  CHECK(classify(config, "model.layers.2.post_attention_layernorm.weight") == ParamGroup::Norm);
  CHECK_THROWS_AS(classify(config, "model.layers.9.mystery.weight"), InternalError);
  CHECK_FALSE(takes_weight_decay("model.layers.2.gdn.A_log", at::zeros({4})));
  CHECK_FALSE(takes_weight_decay("model.layers.2.gdn.o_norm.weight", at::zeros({4})));
  CHECK_FALSE(takes_weight_decay("model.layers.2.gka.b_proj.bias", at::zeros({4})));
  CHECK(takes_weight_decay("model.layers.2.gdn.q_proj.weight", at::zeros({4, 4})));
}

TEST_CASE("resumed metrics drop the steps to be run again and a torn last line", "[train]") {
  const std::string path = (std::filesystem::temp_directory_path() / ("prime_metrics_" + std::to_string(::getpid()) + ".jsonl")).string();
  {
    std::ofstream out(path);
    out << "{\"kind\":\"step\",\"step\":1,\"loss\":3}\n{\"kind\":\"step\",\"step\":2,\"loss\":2}\n"
        << "{\"kind\":\"step\",\"step\":3,\"loss\":1}\n{\"kind\":\"step\",\"st";
  }
  {
    JsonlMetrics metrics(path, 3);
    metrics.write({"step", 3, {{"loss", 0.5}}, {}});
    metrics.flush();
  }
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::filesystem::remove(path);
  REQUIRE(lines.size() == 3);
  CHECK(lines[1].find("\"step\":2") != std::string::npos);
  CHECK(lines[2].find("0.5") != std::string::npos);
}
