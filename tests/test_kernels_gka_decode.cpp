// kernels/ssm_decode's GKA step: H and S updated in place, the Chebyshev solve on chip. Against a
// float64 step written out here (the states rounded to fp32 between steps, as the cache keeps
// them) over several steps in a row, in the float64 solve GKA decodes with and in the fp32 one;
// then the GKA mixer's step on the kernel against the float64 reference mixer and its torch step,
// token by token from an empty cache, and a CUDA graph of that step. Outputs poisoned with NaN.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <array>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/ssm_decode/ssm_decode.h"
#include "model/gka.h"
#include "test_gka_util.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

// One token's operands in float64 on the CPU: q, k unit rows (as the mixer's L2 norm gives), k
// and v scaled by a beta gate, alpha in (0, 1), log decays in (-0.5, 0). Undefined where absent.
struct GkaToken {
  at::Tensor q, k, v, alpha, decay_kk, decay_kv;
};

at::Tensor unit_rows(at::IntArrayRef sizes) {
  const at::Tensor x = at::randn(sizes, at::kDouble);
  return x / x.norm(2, -1, true);
}

GkaToken random_token(int64_t B, int64_t H, int64_t D, bool alpha, bool decays) {
  const at::Tensor beta = at::rand({B, H, 1}, at::kDouble) * 0.9 + 0.1;
  GkaToken in{unit_rows({B, H, D}), unit_rows({B, H, D}) * beta, at::randn({B, H, D}, at::kDouble) * beta, {}, {}, {}};
  if (alpha) in.alpha = at::rand({B, H}, at::kDouble);
  if (decays) in.decay_kk = -at::rand({B, H}, at::kDouble) * 0.5, in.decay_kv = -at::rand({B, H}, at::kDouble) * 0.5;
  return in;
}

at::Tensor to_fp32_and_back(const at::Tensor& t) { return t.to(at::kFloat).to(at::kDouble); }

// The step in float64, written out: H = e^{g_kk} H + k k^T, x from num_iter Chebyshev iterations
// on (H + r ||H||_F I) x = q, q~ = q + alpha (x - q), S = e^{g_kv} S + k v^T, o = scale S^T q~.
// The states come back rounded to fp32, as the cache stores them.
at::Tensor reference_step(const GkaToken& in, at::Tensor& H, at::Tensor& S, int num_iter, double r, double scale) {
  const auto gate = [](const at::Tensor& log_decay) { return at::exp(log_decay).unsqueeze(-1).unsqueeze(-1); };
  at::Tensor q_tilde = in.q;
  if (num_iter > 0) {
    H = (in.decay_kk.defined() ? gate(in.decay_kk) * H : H) + in.k.unsqueeze(-1) * in.k.unsqueeze(-2);
    const at::Tensor f = at::sqrt(at::clamp_min(H.pow(2).sum({-2, -1}), 1e-30)).unsqueeze(-1);
    const at::Tensor lambda = f * r, eta = 2.0 / (2.0 * lambda + f);
    const double spread = 1.0 / (2.0 * (2.0 * r + 1.0));
    at::Tensor x = eta * in.q, x_prev;
    double omega = 2.0;
    for (int i = 0; i < num_iter; ++i) {
      omega = 1.0 / (1.0 - spread * spread * omega);
      const at::Tensor Hx = at::matmul(H, x.unsqueeze(-1)).squeeze(-1);
      // x' = omega (x - eta ((H + lambda) x - q)) + (1 - omega) x_prev
      const at::Tensor momentum = x_prev.defined() ? (1.0 - omega) * x_prev : at::zeros_like(x);
      const at::Tensor next = omega * (x - eta * (Hx + lambda * x - in.q)) + momentum;
      x_prev = x;
      x = next;
    }
    q_tilde = in.alpha.defined() ? in.q + in.alpha.unsqueeze(-1) * (x - in.q) : x;
    H = to_fp32_and_back(H);
  }
  S = (in.decay_kv.defined() ? gate(in.decay_kv) * S : S) + in.k.unsqueeze(-1) * in.v.unsqueeze(-2);
  const at::Tensor o = at::matmul(q_tilde.unsqueeze(-2), S).squeeze(-2) * scale;
  S = to_fp32_and_back(S);
  return o;
}

at::Tensor on_cuda(const at::Tensor& t, at::ScalarType type) {
  return t.defined() ? t.to(at::kCUDA, type) : at::Tensor();
}

struct Case {
  int64_t B, H, D;
  int num_iter;
  bool alpha, decays;
  std::string name() const {
    return "(B,H,D)=(" + std::to_string(B) + "," + std::to_string(H) + "," + std::to_string(D) +
           ") N=" + std::to_string(num_iter) + (alpha ? "" : " no alpha") + (decays ? "" : " no decays");
  }
};

}  // namespace

TEST_CASE("GKA decode kernel: never applies to CPU tensors", "[kernels][decode]") {
  at::NoGradGuard no_grad;
  const GkaToken in = random_token(2, 3, 16, true, true);
  const at::Tensor state = at::zeros({2, 3, 16, 16});
  CHECK_FALSE(kernels::gka_decode_apply(in.q, in.k, in.v, in.alpha, in.decay_kk, in.decay_kv, state, state, {}));
}

TEST_CASE("GKA decode kernel: steps equal float64 in both solve dtypes, the states updated in place",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(23);
  // The 8B conversion's heads at B = 1; D off the warp's multiple (groups of unequal rows); D = 1;
  // no solve (no H); no alpha; no decays; a batch of many blocks.
  const std::vector<Case> cases = {{1, 32, 128, 30, true, true}, {3, 5, 64, 30, true, true},
                                   {2, 3, 37, 10, true, false},  {2, 2, 1, 30, true, true},
                                   {2, 4, 32, 0, false, true},   {2, 4, 32, 30, false, true},
                                   {40, 2, 128, 30, true, true}};
  const double r = 0.02;
  for (const Case& c : cases) {
    for (const at::ScalarType solve : {at::kDouble, at::kFloat}) {
      const std::string what = c.name() + (solve == at::kDouble ? " float64 solve" : " fp32 solve");
      INFO(what);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      // Start from states several tokens in (H positive semidefinite, as the cache's are).
      at::Tensor H = at::zeros({c.B, c.H, c.D, c.D}, at::kDouble), S = at::zeros_like(H);
      for (int t = 0; t < 6; ++t)
        reference_step(random_token(c.B, c.H, c.D, c.alpha, c.decays), H, S, c.num_iter, r, scale);
      at::Tensor kk = c.num_iter > 0 ? on_cuda(H, at::kFloat) : at::Tensor(), kv = on_cuda(S, at::kFloat);
      const void* kv_address = kv.data_ptr();
      const kernels::GkaDecodeOptions options{r, c.num_iter, scale};
      double output_error = 0;
      for (int t = 0; t < 3; ++t) {
        const GkaToken in = random_token(c.B, c.H, c.D, c.alpha, c.decays);
        const at::Tensor q = on_cuda(in.q, solve), k = on_cuda(in.k, solve), v = on_cuda(in.v, solve),
                         alpha = on_cuda(in.alpha, solve), decay_kk = on_cuda(in.decay_kk, solve),
                         decay_kv = on_cuda(in.decay_kv, solve);
        REQUIRE(kernels::gka_decode_apply(q, k, v, alpha, decay_kk, decay_kv, kk, kv, options));
        const at::Tensor got = kernels::gka_decode_step(q, k, v, alpha, decay_kk, decay_kv, kk, kv, options);
        const at::Tensor want = reference_step(in, H, S, c.num_iter, r, scale);
        REQUIRE(got.scalar_type() == at::kFloat);
        output_error = std::max(output_error, test::relative_error(got, want));
      }
      CHECK(kv.data_ptr() == kv_address);
      const double kv_error = test::relative_error(kv, S);
      const double kk_error = c.num_iter > 0 ? test::relative_error(kk, H) : 0.0;
      std::cout << "[kernels][decode] GKA step " << what << ": output vs float64 " << output_error << ", H "
                << kk_error << ", S " << kv_error << " (3 steps)\n";
      // The float64 solve: fp32 rounding of o and the stored states only. The fp32 solve: its
      // rounding amplified by up to 1/r = 50 along H's small eigenvectors (gka.h).
      CHECK(output_error <= (solve == at::kDouble ? 1e-6 : 2e-4));
      CHECK(kk_error <= 1e-6);
      CHECK(kv_error <= 1e-6);
    }
  }
  // D = 129 would not fit: the torch step serves it.
  const GkaToken in = random_token(1, 1, 129, true, true);
  const at::Tensor big = at::zeros({1, 1, 129, 129}, at::TensorOptions().device(at::kCUDA));
  CHECK_FALSE(kernels::gka_decode_apply(on_cuda(in.q, at::kDouble), on_cuda(in.k, at::kDouble),
                                        on_cuda(in.v, at::kDouble), {}, {}, {}, big, big, {}));
}

TEST_CASE("GKA decode kernel: the streamed walk over heads and two heads a multiprocessor give the per-head bits",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(29);
  // 320 heads: more than a block per multiprocessor on any current GPU, so blocks walk several heads;
  // D = 128 and 64 (what the streamed kernel serves); no solve; no alpha and no decays. Three steps in a row.
  // The ways: the streamed kernel (two blocks to a multiprocessor for fp32 solves at D = 128), the per-head kernel
  // (two blocks to a multiprocessor for fp32 solves), and the default (the streamed kernel).
  const std::vector<Case> cases = {{10, 32, 128, 30, true, true}, {5, 64, 64, 30, true, true},
                                   {10, 32, 128, 0, true, true},  {5, 64, 64, 30, false, false}};
  const double r = 0.02;
  for (const Case& c : cases) {
    for (const at::ScalarType solve : {at::kDouble, at::kFloat}) {
      INFO(c.name() + (solve == at::kDouble ? " float64 solve" : " fp32 solve"));
      at::Tensor H = at::zeros({c.B, c.H, c.D, c.D}, at::kDouble), S = at::zeros_like(H);
      for (int t = 0; t < 6; ++t)
        reference_step(random_token(c.B, c.H, c.D, c.alpha, c.decays), H, S, c.num_iter, r, 0.1);
      const at::Tensor kk0 = c.num_iter > 0 ? on_cuda(H, at::kFloat) : at::Tensor(), kv0 = on_cuda(S, at::kFloat);
      const std::vector<std::string> ways = {"1", "0", ""};
      std::vector<at::Tensor> kk(ways.size()), kv(ways.size());
      for (size_t way = 0; way < ways.size(); ++way) kk[way] = kk0.defined() ? kk0.clone() : kk0, kv[way] = kv0.clone();
      const kernels::GkaDecodeOptions options{r, c.num_iter, 0.1};
      for (int t = 0; t < 3; ++t) {
        const GkaToken in = random_token(c.B, c.H, c.D, c.alpha, c.decays);
        const at::Tensor q = on_cuda(in.q, solve), k = on_cuda(in.k, solve), v = on_cuda(in.v, solve),
                         alpha = on_cuda(in.alpha, solve), decay_kk = on_cuda(in.decay_kk, solve),
                         decay_kv = on_cuda(in.decay_kv, solve);
        std::vector<at::Tensor> o(ways.size());
        for (size_t way = 0; way < ways.size(); ++way) {
          const test::ScopedEnv streamed("PRIME_GKA_DECODE_STREAMED", ways[way].c_str());
          REQUIRE(kernels::gka_decode_apply(q, k, v, alpha, decay_kk, decay_kv, kk[way], kv[way], options));
          o[way] = kernels::gka_decode_step(q, k, v, alpha, decay_kk, decay_kv, kk[way], kv[way], options);
        }
        // The same operations in the same order (gka_decode_streamed_kernels.cu).
        for (size_t way = 1; way < ways.size(); ++way) CHECK(at::equal(o[0], o[way]));
      }
      for (size_t way = 1; way < ways.size(); ++way) {
        INFO("way " << way);
        CHECK(at::equal(kv[0], kv[way]));
        if (c.num_iter > 0) CHECK(at::equal(kk[0], kk[way]));
      }
    }
  }
}

// Small enough for compute-sanitizer's memcheck and racecheck, big enough (160 heads) that blocks walk two heads.
TEST_CASE("GKA decode kernel: one streamed step over 160 heads at D 128 and 64", "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  at::NoGradGuard no_grad;
  at::manual_seed(31);
  for (const int64_t D : {128, 64}) {
    INFO("D = " << D);
    at::Tensor H = at::zeros({5, 32, D, D}, at::kDouble), S = at::zeros_like(H);
    for (int t = 0; t < 3; ++t) reference_step(random_token(5, 32, D, true, true), H, S, 30, 0.02, 0.1);
    at::Tensor kk = on_cuda(H, at::kFloat), kv = on_cuda(S, at::kFloat);
    const GkaToken in = random_token(5, 32, D, true, true);
    const at::Tensor got = kernels::gka_decode_step(on_cuda(in.q, at::kDouble), on_cuda(in.k, at::kDouble),
                                                    on_cuda(in.v, at::kDouble), on_cuda(in.alpha, at::kDouble),
                                                    on_cuda(in.decay_kk, at::kDouble),
                                                    on_cuda(in.decay_kv, at::kDouble), kk, kv, {0.02, 30, 0.1});
    const at::Tensor want = reference_step(in, H, S, 30, 0.02, 0.1);
    CHECK(test::relative_error(got, want) <= 1e-6);
    CHECK(test::relative_error(kk, H) <= 1e-6);
    CHECK(test::relative_error(kv, S) <= 1e-6);
  }
}

TEST_CASE("GKA decode kernel: PRIME_GKA_DECODE_STREAMED is read where the streamed kernel serves",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  at::NoGradGuard no_grad;
  const test::ScopedEnv bad("PRIME_GKA_DECODE_STREAMED", "2");
  for (const int64_t D : {128, 64, 37}) {
    INFO("D = " << D);
    const GkaToken in = random_token(2, 3, D, true, true);
    at::Tensor kk = on_cuda(at::zeros({2, 3, D, D}, at::kDouble), at::kFloat), kv = kk.clone();
    const auto step = [&] {
      kernels::gka_decode_step(on_cuda(in.q, at::kDouble), on_cuda(in.k, at::kDouble), on_cuda(in.v, at::kDouble),
                               {}, {}, {}, kk, kv, {});
    };
    if (D == 37) CHECK_NOTHROW(step());
    else CHECK_THROWS_WITH(step(), Catch::Matchers::Contains("PRIME_GKA_DECODE_STREAMED"));
    // Past the streamed kernel's table of weights (256 iterations) the per-head kernel solves.
    const kernels::GkaDecodeOptions long_solve{0.02, 300, 1.0};
    CHECK_NOTHROW(kernels::gka_decode_step(on_cuda(in.q, at::kDouble), on_cuda(in.k, at::kDouble),
                                           on_cuda(in.v, at::kDouble), {}, {}, {}, kk, kv, long_solve));
  }
}

TEST_CASE("GKA decode kernel: the mixer's step equals float64 and its torch step, graphed too",
          "[kernels][gpu][decode]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::FullFp32Matmuls full_fp32;
  const int64_t B = 2, T = 8;
  for (const int num_iter : {30, 0}) {
    const model::GkaConfig config = test_gka::make_config({64, 32, 4, 2}, {{"num_iter", num_iter}});
    const model::TensorMap w64 = test_gka::random_weights(config, 61);
    const at::Tensor x64 = test_gka::random_input(B, T, config.hidden_size, 62);
    const at::Tensor want =
        reference::gka_forward(test_gka::reference_dims(config), test_gka::reference_weights(w64), x64);
    model::GkaMixer mixer(config, test_gka::cast_weights(w64, at::kFloat, at::kCUDA), test_gka::kPrefix);
    const at::Tensor x = x64.to(at::kCUDA, at::kFloat);
    at::NoGradGuard no_grad;
    const auto decode = [&](kernels::Policy policy) {
      const kernels::ScopedKernelPolicy scoped(policy);
      const auto cache = mixer.make_cache(B, at::Device(at::kCUDA));
      std::vector<at::Tensor> outs;
      for (int64_t t = 0; t < T; ++t) outs.push_back(mixer.step(x.narrow(1, t, 1), *cache));
      return at::cat(outs, 1);
    };
    const at::Tensor kernel = decode(kernels::Policy::Auto), torch_step = decode(kernels::Policy::Torch);
    const double kernel_error = test::relative_error(kernel, want);
    const double torch_error = test::relative_error(torch_step, want);
    std::cout << "[kernels][decode] GKA mixer N=" << num_iter << " step vs float64 " << kernel_error
              << " (torch step " << torch_error << "), vs torch step " << test::relative_error(kernel, torch_step)
              << "\n";
    CHECK(kernel_error <= 1e-5);
#ifdef PRIME_WITH_CUDA
    // A CUDA graph of one step replays as the eager step from an equal cache.
    const test::GraphedStep graphed = test::graphed_last_step(mixer, x);
    CHECK(at::equal(graphed.graphed, graphed.eager));
    const auto& e = dynamic_cast<const model::GkaCache&>(*graphed.eager_cache);
    const auto& g = dynamic_cast<const model::GkaCache&>(*graphed.graph_cache);
    CHECK(at::equal(g.kv_state, e.kv_state));
    if (num_iter > 0) CHECK(at::equal(g.kk_state, e.kk_state));
#endif
  }
}
