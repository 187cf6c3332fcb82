// kernels/ssm_decode/decode_inputs: the SSM decode steps' fronts in one launch each. GDN's (short
// convs + SiLU with the conv states updated in place, the L2 norms, the heads repeated, the gates)
// and Mamba-2's (B/C head norms, the conv + SiLU, the heads repeated, delta and A), each against
// a float64 reference written out here on the CPU, outputs poisoned with NaN first. Then each
// mixer's step on the fused kernels against the float64 reference mixer and its torch form, token
// by token from an empty cache, and a CUDA graph of the fused step; and bf16 GDN, Mamba-2 and GKA
// hybrids decoding on the fused fronts (GKA's own front tests: test_kernels_gka_decode_inputs.cpp).
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "eval/decode_bench.h"
#include "kernels/common/policy.h"
#include "kernels/ssm_decode/decode_inputs.h"
#include "model/gdn.h"
#include "model/gka.h"
#include "model/hybrid_model.h"
#include "model/mamba2.h"
#include "reference/ssm_reference.h"
#include "test_decode_steps_util.h"
#include "test_kernels_util.h"
#include "test_ssm_mixer_util.h"

using namespace prime;

namespace {

struct Shape {
  int64_t B, q_heads, k_heads, v_heads, D, K;  // K = 0: no short conv
  bool bias, neg_eigval;
  std::string name() const {
    return "(B,Hq,Hk,Hv,D,K)=(" + std::to_string(B) + "," + std::to_string(q_heads) + "," + std::to_string(k_heads) +
           "," + std::to_string(v_heads) + "," + std::to_string(D) + "," + std::to_string(K) + ")" +
           (bias ? " bias" : "") + (neg_eigval ? " neg_eigval" : "");
  }
};

// One branch's operands in float64 on the CPU.
struct Branch {
  at::Tensor raw, weight, bias, history;  // [B,C], [C,1,K], [C] or undefined, [B,C,K-1]
  int64_t heads;
};

// silu(conv) over [history, raw] (or silu(raw) without a conv), L2-normalised per head with the
// scale where scale > 0, each head repeated to H: [B,H,D].
at::Tensor reference_branch(const Branch& br, int64_t H, int64_t D, double scale) {
  const int64_t B = br.raw.size(0);
  const at::Tensor y_flat = br.weight.defined() ? test::reference_conv_silu(br.raw, br.history, br.weight, br.bias)
                                                : br.raw * at::sigmoid(br.raw);
  at::Tensor y = y_flat.reshape({B, br.heads, D});
  if (scale > 0) y = y * (at::rsqrt(y.pow(2).sum(-1, true) + 1e-6) * scale);
  return y.repeat_interleave(H / br.heads, 1);
}

Branch random_branch(const Shape& s, int64_t heads, at::ScalarType type) {
  const int64_t C = heads * s.D;
  // Values the dtype holds exactly, so the float64 reference sees the kernel's inputs.
  const auto exact = [&](const at::Tensor& t) { return t.to(type).to(at::kDouble); };
  Branch br{exact(at::randn({s.B, C}, at::kDouble)), {}, {}, {}, heads};
  if (s.K > 0) {
    br.weight = exact(at::randn({C, 1, s.K}, at::kDouble) * 0.5);
    if (s.bias) br.bias = exact(at::randn({C}, at::kDouble) * 0.2);
    br.history = at::randn({s.B, C, s.K - 1}, at::kDouble).to(at::kFloat).to(at::kDouble);
  }
  return br;
}

at::Tensor on_cuda(const at::Tensor& t, at::ScalarType type) {
  return t.defined() ? t.to(at::kCUDA, type).contiguous() : at::Tensor();
}

// params_type: A_log's and dt_bias' dtype (models keep them fp32; the kernels take x's too).
void check_shape(const Shape& s, at::ScalarType type, at::ScalarType params_type) {
  const int64_t H = std::max({s.q_heads, s.k_heads, s.v_heads});
  const Branch q = random_branch(s, s.q_heads, type), k = random_branch(s, s.k_heads, type),
               v = random_branch(s, s.v_heads, type);
  // a spans softplus's linear branch (above 20) and its curve; b both signs.
  const at::Tensor b = at::randn({s.B, H}, at::kDouble).mul(2).to(type).to(at::kDouble);
  at::Tensor a = at::randn({s.B, H}, at::kDouble).mul(3).to(type).to(at::kDouble);
  a.select(1, 0).fill_(25.0);
  const at::Tensor A_log = at::rand({H}, at::kDouble).mul(2).to(type).to(at::kDouble);
  const at::Tensor dt_bias = at::randn({H}, at::kDouble).to(type).to(at::kDouble);

  kernels::GdnDecodeWeights w;
  w.q_heads = s.q_heads, w.k_heads = s.k_heads, w.v_heads = s.v_heads, w.heads = H, w.head_dim = s.D;
  w.q_conv = on_cuda(q.weight, type), w.k_conv = on_cuda(k.weight, type), w.v_conv = on_cuda(v.weight, type);
  w.q_conv_bias = on_cuda(q.bias, type), w.k_conv_bias = on_cuda(k.bias, type);
  w.v_conv_bias = on_cuda(v.bias, type);
  w.A_log = on_cuda(A_log, params_type), w.dt_bias = on_cuda(dt_bias, params_type);
  w.q_scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  w.beta_scale = s.neg_eigval ? 2.0 : 1.0;
  const kernels::GdnDecodeConvStates states{on_cuda(q.history, at::kFloat), on_cuda(k.history, at::kFloat),
                                            on_cuda(v.history, at::kFloat)};
  const at::Tensor x = at::randn({s.B, 1, 8}, at::TensorOptions().device(at::kCUDA).dtype(type));
  REQUIRE(kernels::gdn_decode_inputs_apply(x, w, states));
  const kernels::GdnDecodeInputs got = kernels::gdn_decode_inputs(
      on_cuda(q.raw, type), on_cuda(k.raw, type), on_cuda(v.raw, type), on_cuda(b, type), on_cuda(a, type), w, states);

  const double errors[] = {
      test::relative_error(got.q, reference_branch(q, H, s.D, w.q_scale)),
      test::relative_error(got.k, reference_branch(k, H, s.D, 1.0)),
      test::relative_error(got.v, reference_branch(v, H, s.D, 0.0)),
      test::relative_error(got.beta, at::sigmoid(b) * w.beta_scale),
      test::relative_error(got.g, -at::exp(A_log) * at::softplus(a + dt_bias))};
  const char* names[] = {"q", "k", "v", "beta", "g"};
  for (int i = 0; i < 5; ++i) {
    INFO(names[i]);
    CHECK(errors[i] <= 2e-6);
  }
  std::cout << "[kernels][decode] GDN decode inputs " << c10::toString(type) << " " << s.name() << ": q " << errors[0]
            << ", k " << errors[1] << ", v " << errors[2] << ", beta " << errors[3] << ", g " << errors[4]
            << " (vs float64)\n";
  if (s.K > 0)  // each history now holds its last K-1 inputs, exactly
    for (const auto& [after, br] : {std::pair{states.q, q}, std::pair{states.k, k}, std::pair{states.v, v}})
      CHECK(at::equal(after.cpu().to(at::kDouble), test::reference_history(br.raw, br.history)));
}

struct M2Shape {
  int64_t B, q_heads, kv_heads, D, K;
  bool norm, bias;
  std::string name() const {
    return "(B,Hq,Hkv,D,K)=(" + std::to_string(B) + "," + std::to_string(q_heads) + "," + std::to_string(kv_heads) +
           "," + std::to_string(D) + "," + std::to_string(K) + ")" + (norm ? " B/C norm" : "") + (bias ? " bias" : "");
  }
};

void check_mamba2_shape(const M2Shape& s, at::ScalarType type, at::ScalarType params_type) {
  const int64_t H = s.q_heads, Hkv = s.kv_heads, D = s.D, C = (2 * Hkv + H) * D;
  const auto exact = [&](const at::Tensor& t) { return t.to(type).to(at::kDouble); };
  at::Tensor projection = exact(at::randn({s.B, 2 * (H + Hkv) * D + H}, at::kDouble));
  projection.select(1, 2 * (H + Hkv) * D).fill_(25.0);  // dt of head 0 on softplus's linear branch
  const at::Tensor weight = exact(at::randn({C, 1, s.K}, at::kDouble) * 0.5);
  const at::Tensor bias = s.bias ? exact(at::randn({C}, at::kDouble) * 0.2) : at::Tensor();
  const at::Tensor B_norm = s.norm ? exact(at::rand({D}, at::kDouble) + 0.5) : at::Tensor();
  const at::Tensor C_norm = s.norm ? exact(at::rand({D}, at::kDouble) + 0.5) : at::Tensor();
  const at::Tensor A_log = exact(at::rand({H}, at::kDouble) * 2), dt_bias = exact(at::randn({H}, at::kDouble));
  const at::Tensor history = at::randn({s.B, C, s.K - 1}, at::kDouble).to(at::kFloat).to(at::kDouble);

  kernels::Mamba2DecodeWeights w;
  w.q_heads = H, w.kv_heads = Hkv, w.head_dim = D, w.bc_norm_eps = 1e-6;
  w.conv = on_cuda(weight, type), w.conv_bias = on_cuda(bias, type);
  w.B_norm = on_cuda(B_norm, type), w.C_norm = on_cuda(C_norm, type);
  w.A_log = on_cuda(A_log, params_type), w.dt_bias = on_cuda(dt_bias, params_type);
  const at::Tensor conv_state = on_cuda(history, at::kFloat);
  const at::Tensor x = at::randn({s.B, 1, 8}, at::TensorOptions().device(at::kCUDA).dtype(type));
  REQUIRE(kernels::mamba2_decode_inputs_apply(x, w, conv_state));
  const kernels::Mamba2DecodeInputs got = kernels::mamba2_decode_inputs(on_cuda(projection, type), w, conv_state);

  // float64: [z | x | B | C | dt]; B and C normalised per head; the conv over [x | B | C].
  const auto part = [&](int64_t start, int64_t heads) { return projection.narrow(1, start, heads * D); };
  at::Tensor Bs = part((H + Hkv) * D, Hkv), Cs = part((H + 2 * Hkv) * D, H);
  const auto rms = [&](const at::Tensor& t, int64_t heads, const at::Tensor& norm) {
    const at::Tensor r = t.reshape({s.B, heads, D});
    return (r * at::rsqrt(r.pow(2).mean(-1, true) + 1e-6) * norm).reshape({s.B, heads * D});
  };
  if (s.norm) Bs = rms(Bs, Hkv, B_norm), Cs = rms(Cs, H, C_norm);
  const at::Tensor u = at::cat({part(H * D, Hkv), Bs, Cs}, 1);
  const at::Tensor y = test::reference_conv_silu(u, history, weight, bias);
  const auto heads_of = [&](int64_t start, int64_t heads) {
    return y.narrow(1, start * D, heads * D).reshape({s.B, heads, D}).repeat_interleave(H / heads, 1);
  };
  const at::Tensor dt = projection.narrow(1, 2 * (H + Hkv) * D, H);
  const double errors[] = {test::relative_error(got.x, heads_of(0, Hkv)),
                           test::relative_error(got.B, heads_of(Hkv, Hkv)),
                           test::relative_error(got.C, heads_of(2 * Hkv, H)),
                           test::relative_error(got.delta, at::softplus(dt + dt_bias)),
                           test::relative_error(got.A, -at::exp(A_log)),
                           test::relative_error(conv_state, test::reference_history(u, history))};
  const char* names[] = {"x", "B", "C", "delta", "A", "conv state"};
  for (int i = 0; i < 6; ++i) {
    INFO(names[i]);
    CHECK(errors[i] <= 2e-6);
  }
  std::cout << "[kernels][decode] Mamba-2 decode inputs " << c10::toString(type) << " " << s.name() << ": x "
            << errors[0] << ", B " << errors[1] << ", C " << errors[2] << ", delta " << errors[3] << ", A " << errors[4]
            << ", conv state " << errors[5] << " (vs float64)\n";
}

// A mixer's weights on CUDA in `type` (A_log, dt_bias and D in fp32, as models load them), from
// the float64 reference weights.
model::TensorMap cuda_weights(const reference::Weights& weights, at::ScalarType type) {
  model::TensorMap map = testing::with_prefix(weights, "m.", at::kFloat);
  for (auto& [name, tensor] : map) tensor = tensor.to(at::kCUDA, model::stays_fp32_tensor(name) ? at::kFloat : type);
  return map;
}

}  // namespace

TEST_CASE("SSM decode inputs kernels: never apply to CPU tensors", "[kernels][decode]") {
  at::NoGradGuard no_grad;
  reference::GdnDims gdn_dims;
  gdn_dims.hidden = 16, gdn_dims.head_dim = 8, gdn_dims.num_q_heads = 2, gdn_dims.num_kv_heads = 1;
  std::mt19937_64 rng(3);
  model::GdnMixer gdn(model::GdnConfig(16, 8, 2, 1),
                      testing::with_prefix(reference::testing::random_gdn_weights(gdn_dims, rng), "m.", at::kFloat),
                      "m.");
  CHECK_FALSE(gdn.fused_step_applies(at::randn({2, 1, 16}), *gdn.make_cache(2, at::kCPU)));
  reference::Mamba2Dims m2_dims;
  m2_dims.hidden = 16, m2_dims.head_dim = 8, m2_dims.num_q_heads = 2, m2_dims.num_kv_heads = 1;
  model::Mamba2Mixer m2(model::Mamba2Config(16, 8, 2, 1),
                        testing::with_prefix(reference::testing::random_mamba2_weights(m2_dims, rng), "m.", at::kFloat),
                        "m.");
  CHECK_FALSE(m2.fused_step_applies(at::randn({2, 1, 16}), *m2.make_cache(2, at::kCPU)));
}

TEST_CASE("GDN decode inputs kernel: conv, norms, repeated heads and gates equal float64, states updated",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(17);
  // The 8B conversion's heads at B = 1; GQA of every kind; D off the warp's multiple; every K; no
  // conv; D = 256 (eight channels per lane); a batch past one block of warps.
  const std::vector<Shape> shapes = {{1, 32, 8, 8, 128, 4, false, false}, {3, 4, 2, 1, 64, 3, true, true},
                                     {2, 3, 3, 3, 37, 4, false, true},     {5, 2, 2, 2, 256, 2, true, false},
                                     {4, 2, 1, 2, 16, 0, false, false},    {33, 6, 2, 3, 32, 4, true, false}};
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16})
    for (size_t i = 0; i < shapes.size(); ++i) {
      const at::ScalarType params = i % 2 == 0 ? at::kFloat : type;
      INFO(c10::toString(type) << " " << shapes[i].name() << " A_log and dt_bias " << c10::toString(params));
      check_shape(shapes[i], type, params);
    }
}

TEST_CASE("Mamba-2 decode inputs kernel: B/C norms, conv, repeated heads, delta and A equal float64",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(19);
  // The 8B conversion's heads (Hq 32, Hkv 8, D 128) at B = 1; no B/C norm; D off the warp's
  // multiple; every K; D = 256; a batch past one block of warps.
  const std::vector<M2Shape> shapes = {{1, 32, 8, 128, 4, true, true}, {3, 4, 2, 64, 3, false, true},
                                       {2, 3, 3, 37, 4, true, false},  {5, 2, 1, 256, 2, true, true},
                                       {33, 6, 3, 32, 4, true, true}};
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16})
    for (size_t i = 0; i < shapes.size(); ++i) {
      const at::ScalarType params = i % 2 == 0 ? at::kFloat : type;
      INFO(c10::toString(type) << " " << shapes[i].name() << " A_log and dt_bias " << c10::toString(params));
      check_mamba2_shape(shapes[i], type, params);
    }
}

TEST_CASE("SSM decode inputs kernels: the mixers' fused steps equal float64 and the torch forms, graphed too",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::FullFp32Matmuls full_fp32;
  const int64_t B = 3, T = 6;
  struct GdnCase {
    int64_t hidden, D, q_heads, kv_heads;
    bool conv, neg_eigval;
  };
  for (const GdnCase& c : {GdnCase{64, 32, 4, 2, true, false}, GdnCase{48, 16, 3, 3, true, true},
                           GdnCase{32, 16, 2, 1, false, false}}) {
    reference::GdnDims dims;
    dims.hidden = c.hidden, dims.head_dim = c.D, dims.num_q_heads = c.q_heads, dims.num_kv_heads = c.kv_heads;
    dims.use_short_conv = c.conv, dims.conv_bias = c.conv, dims.allow_neg_eigval = c.neg_eigval;
    std::mt19937_64 rng(29 + c.hidden);
    const reference::Weights weights = reference::testing::random_gdn_weights(dims, rng);
    model::GdnConfig config(c.hidden, c.D, c.q_heads, c.kv_heads);
    config.use_short_conv = c.conv, config.conv_bias = c.conv, config.allow_neg_eigval = c.neg_eigval;
    const at::Tensor x64 = testing::random_input(B, T, c.hidden, 31);
    const at::Tensor want = reference::gdn_forward(dims, weights, x64);
    for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
      model::GdnMixer mixer(config, cuda_weights(weights, type), "m.");
      const std::string what = "GDN mixer " + std::string(c10::toString(type)) + " hidden " +
                               std::to_string(c.hidden) + (c.conv ? "" : " no conv") +
                               (c.neg_eigval ? " neg_eigval" : "");
      test::check_mixer_steps(mixer, x64.to(at::kCUDA, type), want, type, what, [](const model::LayerCache& cache) {
        const auto& gdn = dynamic_cast<const model::GdnCache&>(cache);
        return std::vector<at::Tensor>{gdn.state, gdn.q_conv_state, gdn.k_conv_state, gdn.v_conv_state};
      });
    }
  }
  struct M2Case {
    int64_t hidden, D, q_heads, kv_heads;
    bool norm;
  };
  for (const M2Case& c : {M2Case{64, 32, 4, 2, true}, M2Case{48, 16, 3, 3, false}}) {
    reference::Mamba2Dims dims;
    dims.hidden = c.hidden, dims.head_dim = c.D, dims.num_q_heads = c.q_heads, dims.num_kv_heads = c.kv_heads;
    dims.use_qk_norm = c.norm;
    std::mt19937_64 rng(37 + c.hidden);
    const reference::Weights weights = reference::testing::random_mamba2_weights(dims, rng);
    model::Mamba2Config config(c.hidden, c.D, c.q_heads, c.kv_heads);
    config.use_qk_norm = c.norm;
    const at::Tensor x64 = testing::random_input(B, T, c.hidden, 41);
    const at::Tensor want = reference::mamba2_forward(dims, weights, x64);
    for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
      model::Mamba2Mixer mixer(config, cuda_weights(weights, type), "m.");
      const std::string what = "Mamba-2 mixer " + std::string(c10::toString(type)) + " hidden " +
                               std::to_string(c.hidden) + (c.norm ? "" : " no B/C norm");
      test::check_mixer_steps(mixer, x64.to(at::kCUDA, type), want, type, what, [](const model::LayerCache& cache) {
        const auto& m2 = dynamic_cast<const model::Mamba2Cache&>(cache);
        return std::vector<at::Tensor>{m2.state, m2.conv_state};
      });
    }
  }
}

TEST_CASE("SSM decode inputs kernels: the SSM layers of bf16 hybrids decode on them, as with the torch forms",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const std::string teacher =
      "synthetic:qwen3-0.6b@layers=2,hidden=64,heads=4,kv_heads=2,head_dim=32,intermediate=128,vocab=64,seed=7";
  model::LoadOptions load;
  load.device = at::Device(at::kCUDA);
  load.dtype = at::kBFloat16;  // as prime-bench decode loads (A_log, dt_bias, D stay fp32)
  for (const char* type : {"GDN", "M2", "GKA"}) {
    INFO(type);
    eval::BenchModel bench = eval::load_bench_model(teacher + "+convert:" + type + ":1:1", load);
    model::HybridModel& model = *bench.model;
    const at::Tensor ids = at::randint(64, {2, 10}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
    at::NoGradGuard no_grad;
    const auto decode = [&](kernels::Policy policy) {
      const kernels::ScopedKernelPolicy scoped(policy);
      model::ModelCache cache = model.make_cache(2, 10);
      std::vector<at::Tensor> logits{model.forward(ids.narrow(1, 0, 6), &cache)};
      // Every SSM layer's step takes the fused kernels under policy Auto, none under Torch.
      const at::Tensor token = at::randn({2, 1, 64}, at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16));
      int64_t ssm_layers = 0;
      for (int64_t layer = 0; layer < model.num_layers(); ++layer) {
        bool applies = false;
        if (auto* gdn = dynamic_cast<model::GdnMixer*>(&model.mixer(layer)))
          applies = gdn->fused_step_applies(token, *cache.layers[layer]);
        else if (auto* m2 = dynamic_cast<model::Mamba2Mixer*>(&model.mixer(layer)))
          applies = m2->fused_step_applies(token, *cache.layers[layer]);
        else if (auto* gka = dynamic_cast<model::GkaMixer*>(&model.mixer(layer)))
          applies = gka->fused_step_applies(token, *cache.layers[layer]);
        else
          continue;
        ++ssm_layers;
        CHECK(applies == (policy == kernels::Policy::Auto));
      }
      CHECK(ssm_layers == 1);
      for (int64_t t = 6; t < 10; ++t) logits.push_back(model.forward(ids.narrow(1, t, 1), &cache));
      return at::cat(logits, 1).to(at::kFloat);
    };
    const at::Tensor fused = decode(kernels::Policy::Auto), torch_form = decode(kernels::Policy::Torch);
    const double error = test::relative_error(fused, torch_form);
    std::cout << "[kernels][decode] " << type << " bf16 hybrid, 6-token prefill + 4 decode steps, logits vs torch "
              << "forms " << error << "\n";
    CHECK(error <= 5e-2);  // bf16 through two layers, every other kernel off in the torch run too
  }
}
