// GKA: config parsing and refusals, bad weights, the GQA mapping, the Chebyshev solver against a
// direct solve, and float64 gradient checks of the chunked form.
#include <catch2/catch.hpp>

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <iomanip>
#include <iostream>

#include "test_gka_util.h"
#include "util/error.h"

using namespace prime;
using namespace prime::test_gka;
using Catch::Matchers::Contains;

TEST_CASE("GKA config parses every gka_config field", "[gka]") {
  const nlohmann::json json = {
      {"hidden_size", 4096}, {"head_dim", 128}, {"num_q_heads", 32}, {"num_k_heads", 8},
      {"num_v_heads", 8}, {"use_alpha_connection", false}, {"use_v_conv", false},
      {"use_forgetting_gate", false}, {"gla_rescale", false}, {"solver_type", "chebyshev"},
      {"bp_lambda", false}, {"num_iter", 10}, {"ridge_strength", 0.05}, {"use_gate", false},
      {"conv_size", 3}, {"norm_eps", 1e-5}, {"use_forgetting_gate_kk", false},
      {"use_beta_gate", false}, {"chunk_size", 32}, {"kv_proj_rank", nullptr},
      {"kv_learnable_residual", false}};
  const model::GkaConfig c = model::GkaConfig::from_json(json, "layer 5");
  CHECK(c.hidden_size == 4096);
  CHECK(c.head_dim == 128);
  CHECK(c.num_q_heads == 32);
  CHECK(c.num_k_heads == 8);
  CHECK(c.num_v_heads == 8);
  CHECK(c.num_heads() == 32);
  CHECK_FALSE(c.use_alpha_connection);
  CHECK_FALSE(c.use_v_conv);
  CHECK_FALSE(c.use_forgetting_gate);
  CHECK_FALSE(c.gla_rescale);
  CHECK_FALSE(c.bp_lambda);
  CHECK(c.num_iter == 10);
  CHECK(c.ridge_strength == 0.05);
  CHECK_FALSE(c.use_gate);
  CHECK(c.conv_size == 3);
  CHECK(c.norm_eps == 1e-5);
  CHECK_FALSE(c.use_forgetting_gate_kk);
  CHECK_FALSE(c.use_beta_gate);
  CHECK(c.chunk_size == 32);

  const model::GkaConfig defaults = model::GkaConfig::from_json(
      {{"hidden_size", 64}, {"head_dim", 16}, {"num_q_heads", 4}, {"num_k_heads", nullptr}}, "l");
  CHECK(defaults.num_k_heads == 4);
  CHECK(defaults.num_v_heads == 4);
  CHECK(defaults.use_alpha_connection);
  CHECK(defaults.use_v_conv);
  CHECK(defaults.use_forgetting_gate);
  CHECK(defaults.gla_rescale);
  CHECK(defaults.bp_lambda);
  CHECK(defaults.num_iter == 30);
  CHECK(defaults.ridge_strength == 0.02);
  CHECK(defaults.use_gate);
  CHECK(defaults.conv_size == 4);
  CHECK(defaults.norm_eps == 1e-6);
  CHECK(defaults.use_forgetting_gate_kk);
  CHECK(defaults.use_beta_gate);
  CHECK(defaults.chunk_size == 64);
}

TEST_CASE("GKA config refuses what it cannot honour, naming layer and option", "[gka]") {
  const Shape shape{64, 16, 8, 2};
  struct Bad {
    nlohmann::json overrides;
    const char* option;
  };
  const Bad bad[] = {
      {{{"solver_type", "cg"}}, "solver_type"},
      {{{"kv_proj_rank", 16}}, "kv_proj_rank"},
      {{{"kv_learnable_residual", true}}, "kv_learnable_residual"},
      {{{"num_v_heads", 3}}, "num_v_heads"},
      {{{"num_k_heads", 3}}, "num_k_heads"},
      {{{"num_iter", -1}}, "num_iter"},
      {{{"ridge_strength", 0.0}}, "ridge_strength"},
      {{{"norm_eps", -1.0}}, "norm_eps"},
      {{{"chunk_size", 0}}, "chunk_size"},
      {{{"conv_size", 0}}, "conv_size"},
      {{{"use_gate", "yes"}}, "use_gate"},
      {{{"num_iter", 2.5}}, "num_iter"},
      {{{"head_dim", nullptr}}, "head_dim"},
      {{{"mystery_option", 1}}, "mystery_option"},
  };
  for (const Bad& b : bad) {
    INFO(b.overrides.dump());
    CHECK_THROWS_AS(make_config(shape, b.overrides), UserError);
    CHECK_THROWS_WITH(make_config(shape, b.overrides), Contains("layer 3") && Contains(b.option));
  }
}

TEST_CASE("GKA weights: shapes are checked by name, optional tensors follow the options", "[gka]") {
  const Shape shape{32, 8, 4, 2};
  const model::GkaConfig config = make_config(shape);
  model::TensorMap weights = cast_weights(random_weights(config, 71), at::kFloat);
  {
    model::TensorMap wrong = weights;
    wrong[kPrefix + "k_proj.weight"] = at::zeros({8, 32});
    CHECK_THROWS_AS(model::GkaMixer(config, wrong, kPrefix), UserError);
    CHECK_THROWS_WITH(model::GkaMixer(config, wrong, kPrefix),
                      Contains("model.layers.3.gka.k_proj.weight") && Contains("[16, 32]"));
  }
  {
    model::TensorMap wrong = weights;
    wrong[kPrefix + "q_conv1d.weight"] = at::zeros({32, 1, 3});
    CHECK_THROWS_WITH(model::GkaMixer(config, wrong, kPrefix),
                      Contains("model.layers.3.gka.q_conv1d.weight"));
  }
  {
    model::TensorMap missing = weights;
    missing.erase(kPrefix + "A_log");
    CHECK_THROWS_WITH(model::GkaMixer(config, missing, kPrefix),
                      Contains("model.layers.3.gka.A_log"));
  }
  {
    // Tensors of switched-off parts may be absent (HMF omits them).
    model::TensorMap lean = weights;
    for (const char* name : {"b_proj.weight", "b_proj.bias", "alpha_proj.weight",
                             "alpha_proj.bias", "v_conv1d.weight", "g_proj.weight",
                             "a_proj.weight", "A_log", "dt_bias"})
      lean.erase(kPrefix + name);
    const model::GkaConfig off = make_config(
        shape, {{"use_beta_gate", false}, {"use_alpha_connection", false}, {"use_v_conv", false},
                {"use_gate", false}, {"use_forgetting_gate", false}});
    model::GkaMixer mixer(off, lean, kPrefix);
    const at::Tensor out = mixer.forward(random_input(1, 9, 32, 72).to(at::kFloat), nullptr);
    CHECK(at::isfinite(out).all().item<bool>());
  }
  model::GkaMixer mixer(config, weights, kPrefix);
  CHECK(mixer.symbol() == "GKA");
  CHECK_THROWS_WITH(mixer.forward(at::randn({1, 4, 31}), nullptr),
                    Contains("model.layers.3.gka.") && Contains("[1, 4, 31]"));
}

TEST_CASE("GKA edge inputs: all-zero tokens (H = 0), empty sequences", "[gka]") {
  // Zero rows (e.g. padding) give k = q = 0, so H_t = 0 and ||H||_F = 0 until the first real
  // token: the floor on ||H||_F keeps everything finite, forms still agree, gradients finite.
  const Shape shape{32, 8, 4, 2};
  const model::GkaConfig config = make_config(shape, {{"chunk_size", 8}});
  model::TensorMap w = random_weights(config, 75);
  at::Tensor x = random_input(2, 20, 32, 76);
  x = at::cat({at::zeros({2, 5, 32}, at::kDouble), x}, 1);
  model::GkaMixer mixer32(config, cast_weights(w, at::kFloat), kPrefix);
  const at::Tensor chunked = mixer32.forward(x.to(at::kFloat), nullptr);
  CHECK(at::isfinite(chunked).all().item<bool>());
  CHECK(chunked.narrow(1, 0, 5).abs().max().item<double>() == 0.0);
  CHECK(rel_error(chunked, mixer32.forward_recurrent(x.to(at::kFloat), nullptr)) <= 1e-5);
  at::Tensor k_proj = w.at(kPrefix + "k_proj.weight").requires_grad_(true);
  model::GkaMixer mixer64(config, w, kPrefix);
  const at::Tensor grad =
      torch::autograd::grad({mixer64.forward(x, nullptr).pow(2).sum()}, {k_proj})[0];
  CHECK(at::isfinite(grad).all().item<bool>());
  auto cache = mixer32.make_cache(2, at::kCPU);
  CHECK(mixer32.forward(at::zeros({2, 0, 32}), cache.get()).size(1) == 0);
  CHECK(cache->length() == 0);
}

TEST_CASE("GKA GQA: expanded head e reads kv head floor(e / G)", "[gka]") {
  // A GQA layer equals an MHA layer whose k/v weights repeat each kv head's block G times in
  // place (head-level repeat-interleave).
  const Shape gqa_shape{64, 16, 8, 2};
  const int64_t G = 4, D = 16;
  const model::GkaConfig gqa_config = make_config(gqa_shape);
  const model::TensorMap gqa = cast_weights(random_weights(gqa_config, 81), at::kFloat);
  const model::GkaConfig mha_config = make_config({64, 16, 8, 8});
  model::TensorMap mha = gqa;
  for (const char* name : {"k_proj.weight", "v_proj.weight", "k_conv1d.weight", "v_conv1d.weight"}) {
    const at::Tensor w = gqa.at(kPrefix + name);  // [2*D, ...]
    std::vector<int64_t> blocks = {2, 1, D};
    for (int64_t dim = 1; dim < w.dim(); ++dim) blocks.push_back(w.size(dim));
    std::vector<int64_t> expanded = blocks;
    expanded[1] = G;
    std::vector<int64_t> flat = {8 * D};
    for (int64_t dim = 1; dim < w.dim(); ++dim) flat.push_back(w.size(dim));
    mha[kPrefix + name] = w.reshape(blocks).expand(expanded).reshape(flat).contiguous();
  }
  model::GkaMixer gqa_mixer(gqa_config, gqa, kPrefix);
  model::GkaMixer mha_mixer(mha_config, mha, kPrefix);
  const at::Tensor x = random_input(2, 80, 64, 82).to(at::kFloat);
  const double error = rel_error(gqa_mixer.forward(x, nullptr), mha_mixer.forward(x, nullptr));
  std::cout << "[gka] GQA G=4 vs repeat-interleaved MHA weights: max rel err " << error << std::endl;
  CHECK(error <= 1e-6);
  // Tiling (kv head e % Hkv) would be a different function.
  model::TensorMap tiled = gqa;
  for (const char* name : {"k_proj.weight", "v_proj.weight", "k_conv1d.weight", "v_conv1d.weight"}) {
    const at::Tensor w = gqa.at(kPrefix + name);
    tiled[kPrefix + name] = at::cat(std::vector<at::Tensor>(G, w), 0);
  }
  model::GkaMixer tiled_mixer(mha_config, tiled, kPrefix);
  CHECK(rel_error(tiled_mixer.forward(x, nullptr), gqa_mixer.forward(x, nullptr)) > 1e-2);
}

TEST_CASE("GKA Chebyshev solve vs a direct solve, error vs N", "[gka]") {
  // H_t as GKA builds it: decayed sum of beta-scaled unit-norm keys; 8 heads, D = 32, t = 60.
  at::manual_seed(91);
  const int64_t heads = 8, D = 32, tokens = 60;
  const double r = 0.02;
  at::Tensor H = at::zeros({heads, D, D}, at::kDouble);
  for (int64_t t = 0; t < tokens; ++t) {
    at::Tensor k = at::randn({heads, D}, at::kDouble);
    k = k / k.norm(2, {-1}, true) * at::rand({heads, 1}, at::kDouble);
    const at::Tensor decay = at::exp(-at::rand({heads, 1, 1}, at::kDouble) * 0.1);
    H = decay * H + k.unsqueeze(-1) * k.unsqueeze(-2);
  }
  at::Tensor q = at::randn({heads, D}, at::kDouble);
  q = q / q.norm(2, {-1}, true);
  const at::Tensor frob = H.pow(2).sum({-2, -1}).sqrt();
  const at::Tensor system = H + (r * frob).view({heads, 1, 1}) * at::eye(D, at::kDouble);
  const at::Tensor exact = at::linalg_solve(system, q.unsqueeze(-1)).squeeze(-1);
  double previous = 1.0;
  for (int N : {10, 20, 30}) {
    const at::Tensor x64 = model::gka_chebyshev_solve(H, q, r, N);
    const at::Tensor x32 = model::gka_chebyshev_solve(H.to(at::kFloat), q.to(at::kFloat), r, N);
    const double error = rel_error(x64, exact);
    const double error32 = rel_error(x32, exact);
    // The iteration itself matches the float64 reference iteration to rounding.
    double vs_reference = 0.0;
    for (int64_t head = 0; head < heads; ++head) {
      const at::Tensor Hh = H[head].contiguous();
      const std::vector<double> H_vec(Hh.data_ptr<double>(), Hh.data_ptr<double>() + D * D);
      const at::Tensor qh = q[head].contiguous();
      const std::vector<double> q_vec(qh.data_ptr<double>(), qh.data_ptr<double>() + D);
      const double f = frob[head].item<double>();
      const std::vector<double> ref = reference::chebyshev_solve(H_vec, D, r * f, f, q_vec, N);
      const at::Tensor ref_t = at::tensor(at::ArrayRef<double>(ref), at::kDouble);
      vs_reference = std::max(vs_reference, rel_error(x64[head], ref_t));
    }
    std::cout << "[gka] Chebyshev N=" << N << ": max rel err vs linalg_solve " << std::scientific
              << std::setprecision(2) << error << " (fp32: " << error32
              << "), vs reference iteration " << vs_reference << std::endl;
    CHECK(error < previous);
    CHECK(vs_reference <= 1e-12);
    CHECK(std::abs(error32 - error) <= 1e-5);
    previous = error;
  }
  CHECK(previous <= 1e-2);  // N = 30
}

namespace {

// loss = sum(mixer(x) * probe); returns d loss / d each of `params` by autograd, and checks
// a few entries of each against central differences.
void gradient_check(const model::GkaConfig& config, uint64_t seed, const char* label) {
  model::TensorMap w = random_weights(config, seed);
  at::Tensor x = random_input(2, 11, config.hidden_size, seed + 1);
  at::manual_seed(static_cast<int64_t>(seed + 2));
  const at::Tensor probe = at::randn({2, 11, config.hidden_size}, at::kDouble);
  const std::vector<std::string> names = {"A_log", "dt_bias", "b_proj.weight", "b_proj.bias",
                                          "a_proj.weight", "alpha_proj.bias", "k_proj.weight"};
  std::vector<at::Tensor> params = {x};
  for (const std::string& name : names) params.push_back(w.at(kPrefix + name));
  for (at::Tensor& p : params) p.requires_grad_(true);
  model::GkaMixer mixer(config, w, kPrefix);
  const at::Tensor loss = (mixer.forward(x, nullptr) * probe).sum();
  const std::vector<at::Tensor> grads = torch::autograd::grad({loss}, params);

  const double h = 1e-6;
  double worst = 0.0;
  for (size_t p = 0; p < params.size(); ++p) {
    at::NoGradGuard no_grad;
    const at::Tensor flat = params[p].detach().view({-1});
    const int64_t count = std::min<int64_t>(flat.numel(), 6);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t index = (i * 7919) % flat.numel();
      const double saved = flat[index].item<double>();
      flat[index].fill_(saved + h);
      const double up = (mixer.forward(x.detach(), nullptr) * probe).sum().item<double>();
      flat[index].fill_(saved - h);
      const double down = (mixer.forward(x.detach(), nullptr) * probe).sum().item<double>();
      flat[index].fill_(saved);
      const double numeric = (up - down) / (2 * h);
      const double analytic = grads[p].view({-1})[index].item<double>();
      const double error = std::abs(numeric - analytic) / std::max(1e-3, std::abs(numeric));
      worst = std::max(worst, error);
      INFO(label << " param " << (p == 0 ? std::string("x") : names[p - 1]) << "[" << index
                 << "] numeric " << numeric << " analytic " << analytic);
      CHECK(error <= 1e-5);
    }
  }
  std::cout << "[gka] gradient check (" << label << "): worst rel err vs central differences "
            << std::scientific << std::setprecision(2) << worst << std::endl;
}

}  // namespace

TEST_CASE("GKA chunked form gradients match finite differences (float64)", "[gka]") {
  // Tiny: hidden 12, D = 4, 4 q heads over 2 kv heads, T = 11 in chunks of 4 (padding, carried
  // states), so gradients flow through lambda = r ||H||_F, the decays and beta.
  const Shape shape{12, 4, 4, 2};
  gradient_check(make_config(shape, {{"chunk_size", 4}}), 101, "N=30, chunk 4");
  gradient_check(make_config(shape, {{"chunk_size", 4}, {"num_iter", 10}, {"use_v_conv", false}}),
                 111, "N=10, no v conv");
}

TEST_CASE("GKA bp_lambda: gradients of chunked and recurrent forms agree either way", "[gka]") {
  const Shape shape{12, 4, 4, 2};
  std::vector<at::Tensor> by_setting;
  for (bool bp_lambda : {true, false}) {
    const model::GkaConfig config = make_config(shape, {{"chunk_size", 4}, {"bp_lambda", bp_lambda}});
    model::TensorMap w = random_weights(config, 121);
    at::Tensor k_proj = w.at(kPrefix + "k_proj.weight").requires_grad_(true);
    const at::Tensor x = random_input(2, 9, shape.hidden, 122);
    model::GkaMixer mixer(config, w, kPrefix);
    const at::Tensor chunked = torch::autograd::grad({mixer.forward(x, nullptr).pow(2).sum()}, {k_proj})[0];
    const at::Tensor recurrent =
        torch::autograd::grad({mixer.forward_recurrent(x, nullptr).pow(2).sum()}, {k_proj})[0];
    CHECK(rel_error(chunked, recurrent) <= 1e-10);
    by_setting.push_back(chunked);
  }
  // Dropping the lambda path changes the gradient (it is not a no-op option).
  CHECK(rel_error(by_setting[1], by_setting[0]) > 1e-6);
}
