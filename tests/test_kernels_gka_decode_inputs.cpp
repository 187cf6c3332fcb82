// kernels/ssm_decode/decode_inputs: GKA's decode front (the short convs + SiLU with the conv
// states updated in place, q's and k's L2 norms, the heads repeated, the gates from the token
// itself, k and v scaled by beta), against a float64 reference written out here on the CPU,
// outputs poisoned with NaN first, in both solve dtypes. Then the GKA mixer's step on it against
// the float64 reference mixer and its torch form, token by token from an empty cache, over the
// layer's options, and a CUDA graph of the step.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/ssm_decode/decode_inputs.h"
#include "model/gka.h"
#include "model/hybrid_model.h"
#include "test_decode_steps_util.h"
#include "test_gka_util.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

struct Shape {
  int64_t B, hidden, q_heads, k_heads, v_heads, D, K;
  bool v_conv, beta, alpha, decay;
  std::string name() const {
    return "(B,hidden,Hq,Hk,Hv,D,K)=(" + std::to_string(B) + "," + std::to_string(hidden) + "," +
           std::to_string(q_heads) + "," + std::to_string(k_heads) + "," + std::to_string(v_heads) + "," +
           std::to_string(D) + "," + std::to_string(K) + ")" + (v_conv ? "" : " no v conv") + (beta ? "" : " no beta") +
           (alpha ? "" : " no alpha") + (decay ? "" : " no decay");
  }
};

at::Tensor on_cuda(const at::Tensor& t, at::ScalarType type) {
  return t.defined() ? t.to(at::kCUDA, type).contiguous() : at::Tensor();
}

// One branch's conv output (or its projection, without a conv), per head, L2-normalised as
// y / (||y|| + 1e-6) where asked, each head repeated to H: [B,H,D].
at::Tensor reference_heads(const at::Tensor& raw, const at::Tensor& history, const at::Tensor& weight, int64_t heads,
                           int64_t H, int64_t D, bool normalize) {
  const at::Tensor flat = weight.defined() ? test::reference_conv_silu(raw, history, weight, at::Tensor()) : raw;
  at::Tensor y = flat.reshape({raw.size(0), heads, D});
  if (normalize) y = y / (y.norm(2, -1, true) + 1e-6);
  return y.repeat_interleave(H / heads, 1);
}

void check_shape(const Shape& s, at::ScalarType type, at::ScalarType params_type, at::ScalarType solve_type) {
  const int64_t B = s.B, D = s.D, H = std::max({s.q_heads, s.k_heads, s.v_heads});
  // Values the dtype holds exactly, so the float64 reference sees the kernel's inputs.
  const auto exact = [&](const at::Tensor& t) { return t.to(type).to(at::kDouble); };
  const auto raw = [&](int64_t heads) { return exact(at::randn({B, heads * D}, at::kDouble)); };
  const auto conv = [&](int64_t heads) { return exact(at::randn({heads * D, 1, s.K}, at::kDouble) * 0.5); };
  const auto history = [&](int64_t heads) {
    return at::randn({B, heads * D, s.K - 1}, at::kDouble).to(at::kFloat).to(at::kDouble);
  };
  const at::Tensor q = raw(s.q_heads), k = raw(s.k_heads), v = raw(s.v_heads);
  const at::Tensor q_conv = conv(s.q_heads), k_conv = conv(s.k_heads);
  const at::Tensor v_conv = s.v_conv ? conv(s.v_heads) : at::Tensor();
  const at::Tensor q_history = history(s.q_heads), k_history = history(s.k_heads);
  const at::Tensor v_history = s.v_conv ? history(s.v_heads) : at::Tensor();
  const at::Tensor x = exact(at::randn({B, s.hidden}, at::kDouble));
  const auto projection = [&] { return exact(at::randn({H, s.hidden}, at::kDouble) / std::sqrt(double(s.hidden))); };
  const auto bias = [&] { return exact(at::randn({H}, at::kDouble) * 0.5); };
  const at::Tensor b_proj = projection(), b_bias = bias(), alpha_proj = projection(), alpha_bias = bias();
  const at::Tensor a_proj = projection();
  const at::Tensor A_log = exact(at::rand({H}, at::kDouble) * 2);
  at::Tensor dt_bias = exact(at::randn({H}, at::kDouble));
  dt_bias.select(0, 0).fill_(25.0);  // head 0 on softplus's linear branch

  kernels::GkaDecodeWeights w;
  w.q_heads = s.q_heads, w.k_heads = s.k_heads, w.v_heads = s.v_heads, w.heads = H, w.head_dim = D;
  w.q_conv = on_cuda(q_conv, type), w.k_conv = on_cuda(k_conv, type), w.v_conv = on_cuda(v_conv, type);
  if (s.beta) w.b_proj = on_cuda(b_proj, type), w.b_bias = on_cuda(b_bias, type);
  if (s.alpha) w.alpha_proj = on_cuda(alpha_proj, type), w.alpha_bias = on_cuda(alpha_bias, type);
  if (s.decay) w.a_proj = on_cuda(a_proj, type), w.A_log = on_cuda(A_log, params_type);
  if (s.decay) w.dt_bias = on_cuda(dt_bias, params_type);
  const kernels::GkaDecodeConvStates states{on_cuda(q_history, at::kFloat), on_cuda(k_history, at::kFloat),
                                            on_cuda(v_history, at::kFloat)};
  const at::Tensor token = on_cuda(x, type).unsqueeze(1);
  REQUIRE(kernels::gka_decode_inputs_apply(token, w, states));
  const kernels::GkaDecodeInputs got = kernels::gka_decode_inputs(token, on_cuda(q, type), on_cuda(k, type),
                                                                  on_cuda(v, type), w, states, solve_type);
  REQUIRE(got.q.scalar_type() == solve_type);
  REQUIRE(got.alpha.defined() == s.alpha);
  REQUIRE(got.log_decay.defined() == s.decay);

  const at::Tensor scale = s.beta ? (at::sigmoid(at::matmul(x, b_proj.t()) + b_bias) + 1e-6).unsqueeze(-1)
                                  : at::ones({B, H, 1}, at::kDouble);
  std::vector<std::pair<std::string, double>> errors = {
      {"q", test::relative_error(got.q, reference_heads(q, q_history, q_conv, s.q_heads, H, D, true))},
      {"k", test::relative_error(got.k, reference_heads(k, k_history, k_conv, s.k_heads, H, D, true) * scale)},
      {"v", test::relative_error(got.v, reference_heads(v, v_history, v_conv, s.v_heads, H, D, false) * scale)}};
  for (const auto& [name, error] : errors) {
    INFO(name);
    CHECK(error <= 2e-6);
  }
  // The gates: fp32 sums of `hidden` products, each rounded once to the solve dtype.
  if (s.alpha) {
    const double error = test::relative_error(got.alpha, at::sigmoid(at::matmul(x, alpha_proj.t()) + alpha_bias));
    errors.emplace_back("alpha", error);
    CHECK(error <= 1e-5);
  }
  if (s.decay) {
    const at::Tensor want = -at::exp(A_log) * at::softplus(at::matmul(x, a_proj.t()) + dt_bias);
    const double error = test::relative_error(got.log_decay, want);
    errors.emplace_back("log decay", error);
    CHECK(error <= 1e-5);
  }
  std::cout << "[kernels][decode] GKA decode inputs " << c10::toString(type) << " solve "
            << c10::toString(solve_type) << " " << s.name() << ":";
  for (const auto& [name, error] : errors) std::cout << " " << name << " " << error;
  std::cout << " (vs float64)\n";
  // Each history now holds its last K-1 inputs, exactly.
  CHECK(at::equal(states.q.cpu().to(at::kDouble), test::reference_history(q, q_history)));
  CHECK(at::equal(states.k.cpu().to(at::kDouble), test::reference_history(k, k_history)));
  if (s.v_conv) CHECK(at::equal(states.v.cpu().to(at::kDouble), test::reference_history(v, v_history)));
}

// The GKA layer's weights on CUDA in `type`, A_log and dt_bias in fp32 as models load them.
model::TensorMap cuda_weights(const model::TensorMap& w64, at::ScalarType type) {
  model::TensorMap out;
  for (const auto& [name, tensor] : w64)
    out[name] = tensor.to(at::kCUDA, model::stays_fp32_tensor(name) ? at::kFloat : type);
  return out;
}

}  // namespace

TEST_CASE("GKA decode inputs kernels: never apply to CPU tensors", "[kernels][decode]") {
  at::NoGradGuard no_grad;
  const model::GkaConfig config = test_gka::make_config({32, 8, 4, 2});
  model::GkaMixer mixer(config, test_gka::cast_weights(test_gka::random_weights(config, 5), at::kFloat),
                        test_gka::kPrefix);
  CHECK_FALSE(mixer.fused_step_applies(at::randn({2, 1, 32}), *mixer.make_cache(2, at::kCPU)));
}

TEST_CASE("GKA decode inputs kernels: convs, norms, repeated heads and gates equal float64, states updated",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(23);
  // The 8B conversion's heads (hidden 4096) at B = 1; GQA of every kind; D off the warp's multiple
  // and a hidden size off the 16-byte pack (the gates' unpacked loads); every K; no v conv; each
  // gate absent; D = 256; a batch past one block of warps.
  const std::vector<Shape> shapes = {
      {1, 4096, 32, 8, 8, 128, 4, true, true, true, true}, {3, 64, 4, 2, 1, 64, 3, false, true, true, true},
      {2, 36, 3, 3, 3, 37, 4, true, false, true, false},   {5, 128, 2, 2, 2, 256, 2, true, true, false, true},
      {4, 40, 2, 1, 2, 16, 4, false, false, false, false}, {33, 96, 6, 2, 3, 32, 4, true, true, true, true}};
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16})
    for (const at::ScalarType solve : {at::kDouble, at::kFloat})
      for (size_t i = 0; i < shapes.size(); ++i) {
        const at::ScalarType params = i % 2 == 0 ? at::kFloat : type;
        INFO(c10::toString(type) << " solve " << c10::toString(solve) << " " << shapes[i].name()
                                 << " A_log and dt_bias " << c10::toString(params));
        check_shape(shapes[i], type, params, solve);
      }
}

TEST_CASE("GKA decode inputs kernels: the mixer's fused step equals float64 and the torch form, graphed too",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::FullFp32Matmuls full_fp32;
  const int64_t B = 3, T = 6;
  struct Case {
    test_gka::Shape shape;
    nlohmann::json options;
    std::string name;
  };
  const std::vector<Case> cases = {
      {{64, 32, 4, 2}, nlohmann::json::object(), "GQA"},
      {{48, 16, 3, 3}, {{"use_v_conv", false}, {"use_beta_gate", false}}, "no v conv no beta"},
      {{64, 32, 4, 4},
       {{"use_alpha_connection", false}, {"use_forgetting_gate", false}, {"use_gate", false}, {"num_iter", 0}},
       "no alpha no decay no gate N=0"},
      {{36, 12, 3, 3}, {{"use_forgetting_gate_kk", false}}, "hidden 36 no kk decay"}};
  for (const Case& c : cases) {
    const model::GkaConfig config = test_gka::make_config(c.shape, c.options);
    const model::TensorMap w64 = test_gka::random_weights(config, 71 + c.shape.hidden);
    const at::Tensor x64 = test_gka::random_input(B, T, config.hidden_size, 72);
    const at::Tensor want =
        reference::gka_forward(test_gka::reference_dims(config), test_gka::reference_weights(w64), x64);
    for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
      model::GkaMixer mixer(config, cuda_weights(w64, type), test_gka::kPrefix);
      const std::string what = "GKA mixer " + std::string(c10::toString(type)) + " " + c.name;
      test::check_mixer_steps(mixer, x64.to(at::kCUDA, type), want, type, what, [](const model::LayerCache& cache) {
        const auto& gka = dynamic_cast<const model::GkaCache&>(cache);
        return std::vector<at::Tensor>{gka.kk_state, gka.kv_state, gka.conv_q, gka.conv_k, gka.conv_v};
      });
    }
  }
}
