// kernels/gdn_chunk's written-out backward (gdn_chunk_backward.h) on the CPU in float64: given
// the per-chunk results a fused forward saves (computed here from the definitions), its
// gradients of q, k, v, g, beta and the initial state equal autograd's through the torch-ops
// chunked form, with and without document starts, T not a multiple of 64, and with only one of
// the two outputs used. On a GPU: the chain rule's rows kernel on bf16 q, k, v against their fp32 copies.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <iostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/chunk_gemm/chunk_gemm.h"
#include "kernels/common/policy.h"
#include "kernels/gdn_chunk/gdn_chunk_backward.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/gdn_chunk/gdn_chunk_launch.h"
#endif
#include "model/gdn.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

constexpr int64_t kChunk = 64;
const auto kF64 = at::TensorOptions().dtype(at::kDouble);

// [B,T,H,...] -> [B*H, N, 64, ...], zeros past T.
at::Tensor chunked(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> pad;  // constant_pad_nd pads the last dims first
  for (int64_t dim = x.dim() - 1; dim >= 2; --dim) pad.insert(pad.end(), {0, 0});
  pad.insert(pad.end(), {0, N * kChunk - x.size(1)});
  at::Tensor padded = at::constant_pad_nd(x, pad).transpose(1, 2);  // [B,H,N*64,...]
  std::vector<int64_t> shape{x.size(0) * x.size(2), N, kChunk};
  for (int64_t dim = 3; dim < x.dim(); ++dim) shape.push_back(x.size(dim));
  return padded.reshape(shape);
}

// What the fused forward saves, from the chunked form's definitions (float64, one chunk at a
// time for the walk).
kernels::GdnChunkSaved forward_results(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& g, const at::Tensor& beta, const at::Tensor& state,
                                       const std::vector<bool>& starts, bool with_inverse) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), N = (T + kChunk - 1) / kChunk;
  const at::Tensor kc = chunked(k, N), vc = chunked(v, N), gc = chunked(g, N), bc = chunked(beta, N);
  const at::Tensor gamma = at::cumsum(gc, -1);
  const at::Tensor strict = at::exp(gamma.unsqueeze(-1) - gamma.unsqueeze(-2)).tril(-1);
  const at::Tensor A = bc.unsqueeze(-1) * at::matmul(kc, kc.transpose(-1, -2)) * strict;
  const at::Tensor L = A + at::eye(kChunk, q.options());
  const at::Tensor w = at::linalg_solve_triangular(L, (bc * at::exp(gamma)).unsqueeze(-1) * kc, false, true, true);
  const at::Tensor u_local = at::linalg_solve_triangular(L, bc.unsqueeze(-1) * vc, false, true, true);
  const at::Tensor gamma_end = gamma.narrow(-1, kChunk - 1, 1);
  const at::Tensor k_decayed = kc * at::exp(gamma_end - gamma).unsqueeze(-1);
  const at::Tensor decay = at::exp(gamma_end).squeeze(-1);
  at::Tensor S = state.reshape({B * H, D, D});
  std::vector<at::Tensor> states, u;
  for (int64_t n = 0; n < N; ++n) {
    if (!starts.empty() && starts[n]) S = at::zeros_like(S);
    states.push_back(S);
    u.push_back(u_local.select(1, n) - at::matmul(w.select(1, n), S));
    S = decay.select(1, n).view({-1, 1, 1}) * S + at::matmul(k_decayed.select(1, n).transpose(-1, -2), u.back());
  }
  kernels::GdnChunkSaved saved{q, k, v, g, beta, w, at::stack(u, 1), k_decayed, decay, at::stack(states, 1), {}, {}};
  if (with_inverse) saved.inverse = at::linalg_solve_triangular(L, at::eye(kChunk, q.options()).expand(L.sizes()),
                                                                false, true, true);
  if (!starts.empty()) saved.starts = at::tensor(std::vector<int64_t>(starts.begin(), starts.end())).to(at::kBool);
  return saved;
}

// The backward's two sequential pieces as plain loops and a triangular solve; with fused_walk, also the
// fused reverse walk's math (gdn_chunk_launch.h, launch_gdn_backward_walk_bf16) in the saved dtype: per
// chunk from the last, dU_n = P^T dO_n + diag(e^{Gamma_C - Gamma}) K_n G and G <- e^{Gamma_C} G +
// Q_n^T diag(e^Gamma) dO_n - W_n^T dU_n, and the chunk decays' gradient sum(S_n o G_n).
kernels::GdnChunkBackwardOps cpu_ops(bool fused_walk = false) {
  kernels::GdnChunkBackwardOps ops;
  ops.reverse_walk = [](const at::Tensor& k_decayed, const at::Tensor& w, const at::Tensor& d_states,
                        const at::Tensor& decay, const at::Tensor& d_final, const at::Tensor& starts) {
    const int64_t M = w.size(0), N = w.size(1), D = w.size(3);
    at::Tensor G = d_final.defined() ? d_final : at::zeros({M, D, D}, w.options());
    std::vector<at::Tensor> gradients(N);
    for (int64_t n = N - 1; n >= 0; --n) {
      gradients[n] = G;
      G = d_states.select(1, n) + decay.select(1, n).view({-1, 1, 1}) * G -
          at::matmul(w.select(1, n).transpose(-1, -2), at::matmul(k_decayed.select(1, n), G));
      if (starts.defined() && starts[n].item<bool>()) G = at::zeros_like(G);
    }
    return std::make_pair(at::stack(gradients, 1), G);
  };
  ops.inverse = [](const at::Tensor& A) {
    const at::Tensor identity = at::eye(A.size(-1), A.options());
    return at::linalg_solve_triangular(A.tril(-1) + identity, identity.expand(A.sizes()), false, true, true);
  };
  if (!fused_walk) return ops;
  ops.fused_walk = [](const kernels::GdnChunkSaved& s, const at::Tensor& gamma, const at::Tensor& d_out,
                      const at::Tensor& d_final) {
    const int64_t M = s.w.size(0), N = s.w.size(1), D = s.w.size(3);
    const at::Tensor q = chunked(s.q, N), k = chunked(s.k, N);
    const at::Tensor d_o = d_out.defined() ? chunked(d_out, N) : at::zeros_like(q);
    const at::Tensor g = gamma.to(q.scalar_type());
    const at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * at::exp(g.unsqueeze(-1) - g.unsqueeze(-2)).tril();
    const at::Tensor gamma_end = g.narrow(-1, kChunk - 1, 1);
    const at::Tensor to_end = at::exp(gamma_end - g).unsqueeze(-1), e_gamma = at::exp(g).unsqueeze(-1);
    at::Tensor G = d_final.defined() ? d_final : at::zeros({M, D, D}, q.options());
    std::vector<at::Tensor> gradients(N), d_u(N);
    for (int64_t n = N - 1; n >= 0; --n) {
      gradients[n] = G;
      d_u[n] = at::matmul(scores.select(1, n).transpose(-1, -2), d_o.select(1, n)) +
               to_end.select(1, n) * at::matmul(k.select(1, n), G);
      G = at::exp(gamma_end.select(1, n)).unsqueeze(-1) * G +
          at::matmul(q.select(1, n).transpose(-1, -2), e_gamma.select(1, n) * d_o.select(1, n)) -
          at::matmul(s.w.select(1, n).transpose(-1, -2), d_u[n]);
      if (s.starts.defined() && s.starts[n].item<bool>()) G = at::zeros_like(G);
    }
    const at::Tensor grads_after = at::stack(gradients, 1);
    return kernels::GdnFusedWalk{grads_after, at::stack(d_u, 1), G, (s.states * grads_after).sum({-1, -2})};
  };
  return ops;
}

// Gradients of <out, w_out> + <final state, w_final> (either may be left out). Log decays are
// uniform in [-strongest, -0.01]; the backward runs on `type` copies of the float64 operands
// (and of the saved results computed from them), within `tolerance` of float64 autograd. The
// saved results hold (I + A)^-1 as training's do, or not (the backward forms it). With bf16_saved,
// what the bf16 forward saves: q, k, v, w_out and the per-chunk results in bf16 (the operands
// rounded so before the float64 reference sees them), the gates, states and decays fp32, no inverse;
// then each gradient is held to `tolerance` times its bf16 sensitivity (how far the float64 gradient
// moves when q, k, v and w_out carry bf16-sized rounding, each element times 1 + 2^-9 xi).
void check_backward(int64_t T, int64_t D, const std::vector<bool>& starts, bool use_out, bool use_final,
                    double strongest = 0.41, at::ScalarType type = at::kDouble, double tolerance = 1e-10,
                    bool saved_inverse = true, bool bf16_saved = false, bool fused_walk = false) {
  const int64_t B = 2, H = 3, N = (T + kChunk - 1) / kChunk;
  at::manual_seed(17 + T + D);
  at::Tensor q = at::randn({B, T, H, D}, kF64), k = at::randn({B, T, H, D}, kF64);
  q = q / q.norm(2, -1, true) / std::sqrt(static_cast<double>(D));
  k = k / k.norm(2, -1, true);
  at::Tensor v = at::randn({B, T, H, D}, kF64);
  at::Tensor g = -at::rand({B, T, H}, kF64) * (strongest - 0.01) - 0.01;
  at::Tensor beta = at::rand({B, T, H}, kF64) * 0.9 + 0.05;
  at::Tensor state = at::randn({B, H, D, D}, kF64) * 0.1;
  at::Tensor w_out = at::randn({B, T, H, D}, kF64), w_final = at::randn({B, H, D, D}, kF64);
  if (bf16_saved) {
    for (at::Tensor* t : {&q, &k, &v, &w_out}) *t = t->to(at::kBFloat16).to(at::kDouble);
    for (at::Tensor* t : {&g, &beta, &state, &w_final}) *t = t->to(at::kFloat).to(at::kDouble);
  }
  at::Tensor flags;
  if (!starts.empty()) flags = at::tensor(std::vector<int64_t>(starts.begin(), starts.end())).to(at::kBool);

  // Float64 autograd's gradients through the torch-ops form, and last sum_t dg_t g_t per head (what a
  // decay parameter's gradient sums: g = -e^{A_log} softplus(...), d A_log = sum dg g; the steps with
  // strong decays, whose small dg the norm of dg hardly sees, weigh most).
  const auto float64_grads = [&](const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                 const at::Tensor& w_out_) {
    std::vector<at::Tensor> leaves;
    for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&q_, &k_, &v_, &g, &beta, &state})
      leaves.push_back(t->clone().requires_grad_(true));
    const auto [out, final_state] = model::gated_delta_rule_chunked(leaves[0], leaves[1], leaves[2], leaves[3],
                                                                    leaves[4], leaves[5], kChunk, flags);
    at::Tensor loss = at::zeros({}, kF64);
    if (use_out) loss = loss + (out * w_out_).sum();
    if (use_final) loss = loss + (final_state * w_final).sum();
    std::vector<at::Tensor> grads = torch::autograd::grad({loss}, leaves, {}, false, false, /*allow_unused=*/true);
    for (size_t i = 0; i < grads.size(); ++i)
      if (!grads[i].defined()) grads[i] = at::zeros_like(leaves[i]);  // q does not reach the final state
    grads.push_back((grads[3] * g).sum(at::IntArrayRef{0, 1}));
    return grads;
  };
  const std::vector<at::Tensor> want = float64_grads(q, k, v, w_out);
  std::vector<double> bounds(want.size(), tolerance);
  if (bf16_saved) {
    at::manual_seed(29 + T);
    const auto nudge = [](const at::Tensor& t) { return t * (1.0 + std::ldexp(1.0, -9) * at::randn_like(t)); };
    const std::vector<at::Tensor> moved = float64_grads(nudge(q), nudge(k), nudge(v), nudge(w_out));
    for (size_t i = 0; i < want.size(); ++i) bounds[i] = tolerance * test::norm_relative_error(moved[i], want[i]);
  }

  const at::NoGradGuard no_grad;
  const auto as = [&](const at::Tensor& t) { return t.to(type); };
  kernels::GdnChunkSaved saved = forward_results(as(q), as(k), as(v), as(g), as(beta), as(state), starts,
                                                       saved_inverse && !bf16_saved);
  REQUIRE(saved.states.size(1) == N);
  at::Tensor d_out = use_out ? as(w_out) : at::Tensor();
  if (bf16_saved) {
    const auto half = [](const at::Tensor& t) { return t.to(at::kBFloat16); };
    const auto single = [](const at::Tensor& t) { return t.to(at::kFloat); };
    saved = {half(saved.q), half(saved.k),         half(saved.v),      single(saved.g),
             single(saved.beta), half(saved.w),    half(saved.u),      half(saved.k_decayed),
             single(saved.decay), half(saved.states), at::Tensor(),   saved.starts};
    if (d_out.defined()) d_out = half(d_out);
  }
  const kernels::GdnChunkGrads got = kernels::gdn_chunk_backward(
      saved, d_out, use_final ? (bf16_saved ? w_final.to(at::kFloat) : as(w_final)) : at::Tensor(), cpu_ops(fused_walk));
  if (bf16_saved) {  // every gradient in fp32 (the autograd function rounds bf16 leaves' own)
    CHECK(got.q.scalar_type() == at::kFloat);
    CHECK(got.v.scalar_type() == at::kFloat);
    CHECK(got.g.scalar_type() == at::kFloat);
  }
  const auto f64 = [](const at::Tensor& t) { return t.to(at::kDouble); };
  std::vector<at::Tensor> ours = {f64(got.q), f64(got.k), f64(got.v), f64(got.g), f64(got.beta), f64(got.state)};
  ours.push_back((ours[3] * g).sum(at::IntArrayRef{0, 1}));
  const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "dstate", "sum(dg g) per head"};
  for (size_t i = 0; i < ours.size(); ++i) {
    REQUIRE(ours[i].sizes() == want[i].sizes());
    const double error = test::norm_relative_error(ours[i], want[i]);
    INFO("T=" << T << " D=" << D << " " << (bf16_saved ? "bf16 saved" : c10::toString(type)) << " " << names[i]
              << " error " << error << ", bound " << bounds[i]);
    CHECK(error <= bounds[i]);
  }
}

}  // namespace

TEST_CASE("GDN chunked backward written out: float64 gradients equal autograd through the torch-ops form",
          "[kernels][gdn]") {
  SECTION("T not a multiple of 64 and an initial state") { check_backward(150, 32, {}, true, true); }
  SECTION("one chunk shorter than 64, the inverse formed in the backward") {
    check_backward(37, 16, {}, true, true, 0.41, at::kDouble, 1e-10, false);
  }
  SECTION("document starts reset the walk and drop the initial state") {
    check_backward(320, 16, {true, false, true, true, false}, true, true);
  }
  SECTION("a start after chunk 0 keeps the initial state's gradient") {
    check_backward(200, 16, {false, false, true, false}, true, true);
  }
  SECTION("only the output is used, the inverse formed in the backward") {
    check_backward(130, 16, {}, true, false, 0.41, at::kDouble, 1e-10, false);
  }
  SECTION("only the final state is used") { check_backward(130, 16, {}, false, true); }
  SECTION("the fused reverse walk's math gives the same gradients") {
    const auto fused = [](int64_t T, const std::vector<bool>& starts, bool use_out, bool use_final) {
      check_backward(T, 16, starts, use_out, use_final, 0.41, at::kDouble, 1e-10, false, false, true);
    };
    fused(150, {}, true, true);
    fused(320, {true, false, true, true, false}, true, true);
    fused(200, {false, false, true, false}, true, true);
    fused(130, {}, true, false);
    fused(130, {}, false, true);
  }
}

// In fp32 the gates' gradient must not come from differences of large sums: with strong decays
// (e^{Gamma_i - Gamma_j} vanishing a few steps apart) the terms that cancel in exact arithmetic
// are much larger than what remains.
TEST_CASE("GDN chunked backward written out: fp32 gradients stay near float64 under strong decays", "[kernels][gdn]") {
  SECTION("mild decays") { check_backward(200, 32, {}, true, true, 0.41, at::kFloat, 2e-5); }
  // Up to -60 per step (a hybrid's A_log and dt_bias give such gates): summed through dGamma, the
  // decay parameters' gradient was 3.8e-4 from float64 here.
  SECTION("strong decays") { check_backward(200, 32, {}, true, true, 60.0, at::kFloat, 2e-5); }
  SECTION("strong decays with document starts") {
    check_backward(200, 32, {false, true, false, true}, true, true, 60.0, at::kFloat, 2e-5);
  }
}

// From saved results in bf16 (bf16 q, k, v, W, U_n, K_d and states; no inverse) the backward runs in fp32
// on their values. Here they are the float64 forward's, rounded once (the bf16 forward's own arithmetic
// is the GPU tests' and experiments/gdn_bf16_backward's matter): against float64 autograd on the same
// bf16 inputs each gradient within 4x its bf16 sensitivity (the GPU tests' factor, without their 1e-2
// floor). Measured: with fp32 products 0.3-2.5e-3, 0.1-1.5x the sensitivity; with bf16 products
// 1.6-5.1e-3, up to 2.6x (sum(dg g) per head: three numbers at T = 150).
// Both arithmetics of the products (PRIME_GDN_BACKWARD_PRODUCTS): bf16 operands, the default (here
// baddbmm on the operands rounded to bf16, chunk_gemm's Bf16 off CUDA), and fp32.
TEST_CASE("GDN chunked backward written out: from the bf16 forward's results within bf16 accuracy",
          "[kernels][gdn]") {
  for (const char* products : {"bf16", "fp32"}) {
    const test::ScopedEnv setting("PRIME_GDN_BACKWARD_PRODUCTS", products);
    INFO("products " << products);
    check_backward(150, 32, {}, true, true, 0.41, at::kDouble, 4.0, false, true);
    check_backward(320, 64, {false, true, false, false, true}, true, true, 0.02, at::kDouble, 4.0, false, true);
  }
}

// The bf16 forward's warpgroup walk keeps no K_d; the backward's split walk then forms it from K and the
// gates (diag(e^{Gamma_C - Gamma}) K): the gradients of saved results with K_d and without it agree to
// float64's rounding (T not a multiple of 64 with a document start, where the keys are copied per chunk;
// one sequence of two whole chunks, where the backward reads them in place).
TEST_CASE("GDN chunked backward written out: without a saved K_d the split walk forms it", "[kernels][gdn]") {
  const auto [B, T, starts] = GENERATE(table<int64_t, int64_t, std::vector<bool>>(
      {{2, 150, {false, true, false}}, {1, 128, {}}}));
  const int64_t H = 2, D = 16;
  INFO("B " << B << " T " << T);
  at::manual_seed(41);
  at::Tensor q = at::randn({B, T, H, D}, kF64), k = at::randn({B, T, H, D}, kF64);
  q = q / q.norm(2, -1, true) / std::sqrt(static_cast<double>(D));
  k = k / k.norm(2, -1, true);
  const at::Tensor v = at::randn({B, T, H, D}, kF64), d_out = at::randn({B, T, H, D}, kF64);
  const at::Tensor g = -at::rand({B, T, H}, kF64) * 0.4 - 0.01, beta = at::rand({B, T, H}, kF64) * 0.9 + 0.05;
  const at::Tensor state = at::randn({B, H, D, D}, kF64) * 0.1, d_final = at::randn({B * H, D, D}, kF64);
  const at::NoGradGuard no_grad;
  const kernels::GdnChunkSaved with = forward_results(q, k, v, g, beta, state, starts, false);
  kernels::GdnChunkSaved without = with;
  without.k_decayed = at::Tensor();
  const kernels::GdnChunkGrads want = kernels::gdn_chunk_backward(with, d_out, d_final, cpu_ops());
  const kernels::GdnChunkGrads got = kernels::gdn_chunk_backward(without, d_out, d_final, cpu_ops());
  const std::pair<const char*, std::pair<at::Tensor, at::Tensor>> grads[] = {
      {"q", {got.q, want.q}}, {"k", {got.k, want.k}},       {"v", {got.v, want.v}},
      {"g", {got.g, want.g}}, {"beta", {got.beta, want.beta}}, {"state", {got.state, want.state}}};
  for (const auto& [name, pair] : grads) {
    INFO(name << " gradient");
    CHECK(test::norm_relative_error(pair.first, pair.second) <= 1e-12);
  }
  // A K_d formed wrongly would show: the saved one scaled moves k's gradient far past that.
  kernels::GdnChunkSaved scaled = with;
  scaled.k_decayed = with.k_decayed * 1.01;
  CHECK(test::norm_relative_error(kernels::gdn_chunk_backward(scaled, d_out, d_final, cpu_ops()).k, want.k) > 1e-6);
}

TEST_CASE("GDN chunked backward written out: PRIME_GDN_BACKWARD_PRODUCTS picks the products' arithmetic",
          "[kernels][gdn]") {
  using kernels::GemmPrecision;
  {
    const test::ScopedEnv unset("PRIME_GDN_BACKWARD_PRODUCTS", nullptr);
    CHECK(kernels::gdn_bf16_backward_products() == GemmPrecision::Bf16);
  }
  for (const auto& [text, precision] : {std::pair{"bf16", GemmPrecision::Bf16}, std::pair{"fp32", GemmPrecision::Fp32}}) {
    const test::ScopedEnv set("PRIME_GDN_BACKWARD_PRODUCTS", text);
    CHECK(kernels::gdn_bf16_backward_products() == precision);
  }
  const test::ScopedEnv bad("PRIME_GDN_BACKWARD_PRODUCTS", "tf32");
  CHECK_THROWS_WITH(kernels::gdn_bf16_backward_products(), Catch::Contains("PRIME_GDN_BACKWARD_PRODUCTS=tf32"));
}

TEST_CASE("GDN chunked backward written out: PRIME_GDN_BACKWARD_WALK picks the walk", "[kernels][gdn]") {
  using kernels::GdnBackwardWalk;
  {
    const test::ScopedEnv unset("PRIME_GDN_BACKWARD_WALK", nullptr);
    CHECK(kernels::gdn_bf16_backward_walk() == GdnBackwardWalk::Auto);
  }
  for (const auto& [text, walk] : {std::pair{"auto", GdnBackwardWalk::Auto}, std::pair{"split", GdnBackwardWalk::Split},
                                   std::pair{"fused", GdnBackwardWalk::Fused}}) {
    const test::ScopedEnv set("PRIME_GDN_BACKWARD_WALK", text);
    CHECK(kernels::gdn_bf16_backward_walk() == walk);
  }
  const test::ScopedEnv bad("PRIME_GDN_BACKWARD_WALK", "wgmma");
  CHECK_THROWS_WITH(kernels::gdn_bf16_backward_walk(), Catch::Contains("PRIME_GDN_BACKWARD_WALK=wgmma"));
}

TEST_CASE("GDN chunked backward written out: PRIME_GDN_BACKWARD_SUMS picks where the last products run",
          "[kernels][gdn]") {
  using kernels::GdnBackwardSums;
  {
    const test::ScopedEnv unset("PRIME_GDN_BACKWARD_SUMS", nullptr);
    CHECK(kernels::gdn_backward_sums() == GdnBackwardSums::Kernels);
  }
  for (const auto& [text, sums] : {std::pair{"kernels", GdnBackwardSums::Kernels},
                                   std::pair{"value", GdnBackwardSums::Value},
                                   std::pair{"products", GdnBackwardSums::Products}}) {
    const test::ScopedEnv set("PRIME_GDN_BACKWARD_SUMS", text);
    CHECK(kernels::gdn_backward_sums() == sums);
  }
  const test::ScopedEnv bad("PRIME_GDN_BACKWARD_SUMS", "chunk_gemm");
  CHECK_THROWS_WITH(kernels::gdn_backward_sums(), Catch::Contains("PRIME_GDN_BACKWARD_SUMS=chunk_gemm"));
}

#ifdef PRIME_WITH_CUDA
// The chain rule's rows kernel reads q, k and v as the bf16 forward's bf16 (GDN's bf16 backward with
// bf16 products) or in fp32: their exact values either way, so every output is the same to the bit; and
// it writes dq, dk and dv in bf16 for bf16 leaves: the fp32 gradients rounded, to the bit.
// Random operands, T not a multiple of 64, each head dim the kernel serves.
TEST_CASE("GDN backward rows kernel: bf16 q k v give their fp32 copies' gradients bit for bit and bf16 ones rounded",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::TensorOptions f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (const int64_t D : {32, 64, 128, 256}) {
    const int64_t B = 2, T = 150, H = 3, N = (T + kChunk - 1) / kChunk, MN = B * H * N;
    at::manual_seed(40 + D);
    const auto rows = [&] { return at::randn({MN, kChunk, D}, f32); };
    const auto gates = [&] { return at::randn({MN, kChunk}, f32); };
    const at::Tensor q16 = rows().to(at::kBFloat16), k16 = rows().to(at::kBFloat16), v16 = rows().to(at::kBFloat16);
    // q, k and v as the kernel takes them: [B,H,N,64,D] (here contiguous, chunk-major as the other operands)
    const auto per_chunk = [&](const at::Tensor& x) { return x.view({B, H, N, kChunk, D}); };
    kernels::detail::GdnBackwardRows in;
    in.d_q_decayed = rows(), in.d_k_in = rows(), in.d_k_decayed = rows(), in.d_v_in = rows();
    in.dq_products = rows(), in.dk_products = rows();
    in.g = -at::rand({MN, kChunk}, f32) / 10, in.beta = at::rand({MN, kChunk}, f32);
    in.d_beta_a = gates(), in.dg_decay = gates();
    in.chunk_decay = at::rand({MN}, f32), in.d_chunk_decay = at::randn({MN}, f32);
    std::vector<std::vector<at::Tensor>> outs;
    for (const bool bf16 : {true, false}) {
      kernels::detail::GdnBackwardRows run = in;
      run.q = per_chunk(bf16 ? q16 : q16.to(at::kFloat)), run.k = per_chunk(bf16 ? k16 : k16.to(at::kFloat));
      run.v = per_chunk(bf16 ? v16 : v16.to(at::kFloat));
      run.dq = kernels::new_output({B, T, H, D}, f32), run.dk = kernels::new_output({B, T, H, D}, f32);
      run.dv = kernels::new_output({B, T, H, D}, f32);
      run.dg = kernels::new_output({B, T, H}, f32), run.d_beta = kernels::new_output({B, T, H}, f32);
      kernels::detail::launch_gdn_backward_rows(run);
      outs.push_back({run.dq, run.dk, run.dv, run.dg, run.d_beta});
    }
    // bf16 gradients (bf16 leaves): the fp32 ones rounded to nearest even, bit for bit; dg and dbeta fp32.
    kernels::detail::GdnBackwardRows rounded = in;
    rounded.q = per_chunk(q16), rounded.k = per_chunk(k16), rounded.v = per_chunk(v16);
    const at::TensorOptions bf16 = f32.dtype(at::kBFloat16);
    rounded.dq = at::full({B, T, H, D}, NAN, bf16), rounded.dk = at::full({B, T, H, D}, NAN, bf16);
    rounded.dv = at::full({B, T, H, D}, NAN, bf16);
    rounded.dg = kernels::new_output({B, T, H}, f32), rounded.d_beta = kernels::new_output({B, T, H}, f32);
    kernels::detail::launch_gdn_backward_rows(rounded);
    const std::vector<at::Tensor> bf16_outs{rounded.dq, rounded.dk, rounded.dv, rounded.dg, rounded.d_beta};
    INFO("D = " << D);
    for (size_t i = 0; i < outs[0].size(); ++i) {
      CHECK_FALSE(outs[0][i].isnan().any().item<bool>());
      CHECK(at::equal(outs[0][i], outs[1][i]));
      CHECK(at::equal(bf16_outs[i], i < 3 ? outs[0][i].to(at::kBFloat16) : outs[0][i]));
    }
  }
}
#endif

#ifdef PRIME_WITH_CUDA
// The gates kernel writes d(QK^T) and d(KK^T) + d(KK^T)^T over d_scores and p (fp32), or, for bf16 products,
// into bf16 tensors of their own: then the fp32 results rounded to nearest even, bit for bit, and the row
// sums the same. Random operands; an fp32 output anywhere but over its input refused.
TEST_CASE("GDN backward gates kernel: bf16 d(QK^T) and d(KK^T) are the fp32 ones rounded", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::TensorOptions f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const int64_t MN = 45;
  at::manual_seed(77);
  const auto square = [&] { return at::randn({MN, kChunk, kChunk}, f32); };
  const at::Tensor d_scores = square(), qk = square(), p = square(), kk = square();
  const at::Tensor g = -at::rand({MN, kChunk}, f32) / 10, beta = at::rand({MN, kChunk}, f32);
  // fp32, in place (on copies)
  const at::Tensor d_qk = d_scores.clone(), d_kk = p.clone();
  const at::Tensor d_beta_a = kernels::new_output({MN, kChunk}, f32);
  const at::Tensor dg_decay = kernels::new_output({MN, kChunk}, f32);
  kernels::detail::launch_gdn_backward_gates(d_qk, qk, d_kk, kk, g, beta, d_qk, d_kk, d_beta_a, dg_decay);
  // bf16, the inputs kept
  const at::TensorOptions bf16 = f32.dtype(at::kBFloat16);
  const at::Tensor d_qk16 = at::full({MN, kChunk, kChunk}, NAN, bf16);
  const at::Tensor d_kk16 = at::full({MN, kChunk, kChunk}, NAN, bf16);
  const at::Tensor d_beta_a16 = kernels::new_output({MN, kChunk}, f32);
  const at::Tensor dg_decay16 = kernels::new_output({MN, kChunk}, f32);
  const at::Tensor d_scores_in = d_scores.clone(), p_in = p.clone();
  kernels::detail::launch_gdn_backward_gates(d_scores_in, qk, p_in, kk, g, beta, d_qk16, d_kk16, d_beta_a16,
                                             dg_decay16);
  CHECK_FALSE(d_qk.isnan().any().item<bool>());
  CHECK_FALSE(d_kk.isnan().any().item<bool>());
  CHECK_FALSE(at::equal(d_qk, d_scores));  // it acted
  CHECK(at::equal(d_qk16, d_qk.to(at::kBFloat16)));
  CHECK(at::equal(d_kk16, d_kk.to(at::kBFloat16)));
  CHECK(at::equal(d_beta_a16, d_beta_a));
  CHECK(at::equal(dg_decay16, dg_decay));
  CHECK(at::equal(d_scores_in, d_scores));  // bf16 outputs leave the inputs as they were
  CHECK(at::equal(p_in, p));
  CHECK_THROWS_WITH(kernels::detail::launch_gdn_backward_gates(d_scores_in, qk, p_in, kk, g, beta, d_qk.clone(),
                                                               d_kk, d_beta_a, dg_decay),
                    Catch::Matchers::Contains("an fp32 d_qk is written in place of d_scores"));
}
#endif

#ifdef PRIME_WITH_CUDA
// The backward's T formed from K K^T, the gates and beta in one kernel (the bf16 forward keeps no T):
// against float64's (I + A)^-1 of the same inputs, and against the torch form it replaces (A formed in
// ATen ops, then unit_lower_inverse), for independent and strongly correlated keys, with the padding
// rows of a partial last chunk (gates and beta zero there: T's rows the identity's).
TEST_CASE("GDN backward inverse kernel: T from K K^T equals float64's and the torch form's and a bf16 T its rounding",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::TensorOptions f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  for (const double correlation : {0.0, 0.9}) {
    at::manual_seed(60 + static_cast<int>(10 * correlation));
    const int64_t MN = 37, D = 64, valid = 40;  // every chunk's rows past `valid` padding in the last
    at::Tensor keys = at::randn({MN, kChunk, D}, at::kDouble);
    keys = correlation * at::randn({MN, 1, D}, at::kDouble) + (1 - correlation) * keys;
    keys = keys / keys.norm(2, -1, true);
    at::Tensor g = -at::rand({MN, kChunk}, at::kDouble) * 0.2, beta = at::rand({MN, kChunk}, at::kDouble);
    g.select(0, MN - 1).narrow(0, valid, kChunk - valid).zero_();
    beta.select(0, MN - 1).narrow(0, valid, kChunk - valid).zero_();
    keys.select(0, MN - 1).narrow(0, valid, kChunk - valid).zero_();
    const at::Tensor kk = at::matmul(keys, keys.transpose(-1, -2)).to(at::kFloat);  // what the backward holds
    g = g.to(at::kFloat), beta = beta.to(at::kFloat);
    // float64 of the same fp32 inputs
    const at::Tensor gamma = at::cumsum(g.to(at::kDouble), -1);
    const at::Tensor decay = at::exp(gamma.unsqueeze(-1) - gamma.unsqueeze(-2));
    const at::Tensor A = (beta.to(at::kDouble).unsqueeze(-1) * kk.to(at::kDouble) * decay).tril(-1);
    const at::Tensor reference = at::linalg_inv(A + at::eye(kChunk, A.options()));
    // the torch form it replaces, on the GPU
    const at::Tensor A32 = (beta.unsqueeze(-1) * kk * decay.to(at::kFloat)).tril(-1).to(f32).contiguous();
    const at::Tensor torch_form = kernels::new_output({MN, kChunk, kChunk}, f32);
    kernels::detail::launch_unit_lower_inverse(A32, torch_form);
    const at::Tensor ours = kernels::new_output({MN, kChunk, kChunk}, f32);
    kernels::detail::launch_gdn_backward_inverse(kk.to(f32), g.to(f32), beta.to(f32), ours);
    const double vs_f64 = test::norm_relative_error(ours.cpu().to(at::kDouble), reference);
    const double vs_torch = test::norm_relative_error(ours.cpu().to(at::kDouble), torch_form.cpu().to(at::kDouble));
    const double torch_vs_f64 = test::norm_relative_error(torch_form.cpu().to(at::kDouble), reference);
    std::cout << "[kernels][gdn] backward inverse, key correlation " << correlation << ": T vs float64 " << vs_f64
              << " (the torch form " << torch_vs_f64 << "), vs the torch form " << vs_torch << std::endl;
    CHECK_FALSE(ours.isnan().any().item<bool>());
    CHECK(vs_f64 <= std::max(1e-6, 2 * torch_vs_f64));
    CHECK(vs_torch <= 1e-5);
    const at::Tensor padding = ours.select(0, MN - 1).narrow(0, valid, kChunk - valid).cpu();
    CHECK(at::equal(padding, at::eye(kChunk, at::kFloat).narrow(0, valid, kChunk - valid)));

    // A bf16 T (for bf16 products; its off-diagonal blocks on TF32 MMAs): as near float64's T as float64's
    // own T rounded to bf16, within a quarter of that rounding (the TF32 products move some elements across
    // a rounding boundary: how many is printed).
    const at::Tensor ours_bf16 = kernels::new_output({MN, kChunk, kChunk}, f32.dtype(at::kBFloat16));
    kernels::detail::launch_gdn_backward_inverse(kk.to(f32), g.to(f32), beta.to(f32), ours_bf16);
    const at::Tensor got = ours_bf16.cpu().to(at::kDouble);
    const at::Tensor rounded = reference.to(at::kBFloat16).to(at::kDouble);
    const double bf16_vs_f64 = test::norm_relative_error(got, reference);
    const double rounding = test::norm_relative_error(rounded, reference);
    const double moved = (got != rounded).to(at::kDouble).mean().item<double>();
    std::cout << "[kernels][gdn] backward inverse in bf16, key correlation " << correlation << ": T vs float64 "
              << bf16_vs_f64 << " (float64 rounded to bf16 " << rounding << "), elements off that rounding "
              << moved << std::endl;
    CHECK(bf16_vs_f64 <= 1.25 * rounding);
    CHECK(at::equal(ours_bf16.select(0, MN - 1).narrow(0, valid, kChunk - valid).cpu(),
                    at::eye(kChunk, at::kBFloat16).narrow(0, valid, kChunk - valid)));
  }
}
#endif

#ifdef PRIME_WITH_CUDA
namespace {

// bf16 rows of q or k as the backward takes them: [B,H,N,64,D] viewed in place in time-major [B,64N,H,D] storage
// (strided), or a per-chunk copy (contiguous).
at::Tensor key_rows(int64_t B, int64_t N, int64_t H, int64_t D, bool in_place) {
  const at::Tensor x = at::randn({B, N * kChunk, H, D}, at::TensorOptions().device(at::kCUDA)).to(at::kBFloat16);
  const at::Tensor rows = x.unflatten(1, {N, kChunk}).permute({0, 3, 1, 2, 4});
  return in_place ? rows : rows.contiguous();
}

// X Y^T per chunk in float64 from bf16 rows [B,H,N,64,D]: [B*H*N, 64, 64].
at::Tensor gram64(const at::Tensor& x, const at::Tensor& y) {
  const auto flat = [](const at::Tensor& r) { return r.cpu().to(at::kDouble).reshape({-1, kChunk, r.size(-1)}); };
  return at::matmul(flat(x), flat(y).transpose(-1, -2));
}

}  // namespace

// The gates kernel forming its [64][64] operands itself (the backward's bf16 products): Q K^T and K K^T from
// the bf16 rows of q and k, P = T^T dT T^T from bf16 T (unit lower triangular) and dT; against float64 sums of
// the same inputs, beside the kernel given float64's products rounded to fp32: d(QK^T) equal bit for bit (it
// depends on neither), d(KK^T) + d(KK^T)^T within 1.25x float64's own rounding to bf16, the row sums and the
// decays' part of dg within 2e-5 of float64. Given dO's and U's rows instead of d_scores, the kernel forms
// d_scores = dO U^T itself: every output equal bit for bit to the kernel given chunk_gemm's bf16 product of the
// same rows. Head dims 32, 64 and 128; q, k and dO strided views of time-major tensors and per-chunk copies.
TEST_CASE("GDN backward gates kernel: its operands formed from bf16 rows match float64", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::TensorOptions f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const at::TensorOptions bf16 = f32.dtype(at::kBFloat16);
  const int64_t B = 2, H = 3, N = 3, MN = B * H * N;
  for (const auto& [D, in_place] : {std::pair<int64_t, bool>{32, true}, {64, false}, {128, true}, {128, false}}) {
    at::manual_seed(90 + D + (in_place ? 1 : 0));
    const at::Tensor q = key_rows(B, N, H, D, in_place), k = key_rows(B, N, H, D, in_place);
    REQUIRE(kernels::detail::gdn_backward_key_rows_apply(q, k));
    const at::Tensor qk64 = gram64(q, k), kk64 = gram64(k, k);
    const at::Tensor unit = at::eye(kChunk, kF64);
    const at::Tensor T = (0.3 * at::randn({MN, kChunk, kChunk}, kF64).tril(-1) + unit).to(bf16);
    const at::Tensor dT = at::randn({MN, kChunk, kChunk}, kF64).to(bf16);
    const at::Tensor T64 = T.cpu().to(at::kDouble), dT64 = dT.cpu().to(at::kDouble);
    const at::Tensor p64 = at::matmul(at::matmul(T64.transpose(-1, -2), dT64), T64.transpose(-1, -2));
    const at::Tensor d_scores = at::randn({MN, kChunk, kChunk}, f32);
    const at::Tensor g = -at::rand({MN, kChunk}, f32) / 10, beta = at::rand({MN, kChunk}, f32);
    enum class Form { Rows, Given, ScoreRows };
    const at::Tensor d_o = key_rows(B, N, H, D, in_place), u = key_rows(B, N, H, D, false);
    const at::Tensor d_scores_product =
        kernels::chunk_matmul(d_o, u.transpose(-1, -2), 1.0, at::Tensor(), kernels::GemmPrecision::Bf16)
            .reshape({MN, kChunk, kChunk});
    const auto run = [&](Form form, const at::Tensor& scores) {
      std::vector<at::Tensor> out{kernels::new_output({MN, kChunk, kChunk}, bf16),
                                  kernels::new_output({MN, kChunk, kChunk}, bf16), kernels::new_output({MN, kChunk}, f32),
                                  kernels::new_output({MN, kChunk}, f32)};
      if (form == Form::Rows)
        kernels::detail::launch_gdn_backward_gates_from_rows(scores, {}, q, k, T, dT, g, beta, out[0], out[1], out[2],
                                                             out[3]);
      else if (form == Form::ScoreRows)
        kernels::detail::launch_gdn_backward_gates_from_rows(at::Tensor(), {d_o, u}, q, k, T, dT, g, beta, out[0],
                                                             out[1], out[2], out[3]);
      else
        kernels::detail::launch_gdn_backward_gates(scores, qk64.to(f32), p64.to(f32), kk64.to(f32), g, beta, out[0],
                                                   out[1], out[2], out[3]);
      return out;
    };
    const std::vector<at::Tensor> rows = run(Form::Rows, d_scores), given = run(Form::Given, d_scores);
    const std::vector<at::Tensor> scores_given = run(Form::Rows, d_scores_product);
    const std::vector<at::Tensor> scores_formed = run(Form::ScoreRows, at::Tensor());
    for (size_t i = 0; i < scores_given.size(); ++i) CHECK(at::equal(scores_formed[i], scores_given[i]));
    CHECK_FALSE(at::equal(scores_formed[0], rows[0]));  // the formed d_scores reached d(QK^T)
    // float64 of the same inputs
    const at::Tensor gamma = at::cumsum(g.cpu().to(at::kDouble), -1);
    const at::Tensor decay = at::exp(gamma.unsqueeze(-1) - gamma.unsqueeze(-2)).tril();
    const at::Tensor a = -(p64 * decay).tril(-1);  // dA_ij D_ij
    const at::Tensor b = beta.cpu().to(at::kDouble).unsqueeze(-1);
    const at::Tensor d_kk = a * b + (a * b).transpose(-1, -2);
    const at::Tensor d_beta_a = (a * kk64).sum(-1);
    const at::Tensor e = d_scores.cpu().to(at::kDouble) * qk64 * decay + a * kk64 * b;
    // dg_decay_t = sum_{j < t} sum_{i >= t} E_ij
    const at::Tensor below = at::flip(at::cumsum(at::flip(e, {-2}), -2), {-2});  // sum_{i >= t} E_ij at row t
    const at::Tensor dg_decay = (below * at::ones({kChunk, kChunk}, kF64).tril(-1)).sum(-1);
    const std::string shape = "D = " + std::to_string(D) + (in_place ? " (strided)" : " (copies)");
    for (const auto& [name, got, reference, other] :
         {std::tuple{"d_beta_a", rows[2], d_beta_a, given[2]}, {"dg_decay", rows[3], dg_decay, given[3]}}) {
      const double error = test::norm_relative_error(got.cpu().to(at::kDouble), reference);
      const double other_error = test::norm_relative_error(other.cpu().to(at::kDouble), reference);
      std::cout << "[kernels][gdn] gates from bf16 rows, " << shape << ": " << name << " vs float64 " << error
                << " (given fp32 products " << other_error << ")" << std::endl;
      CHECK(error <= 2e-5);
    }
    const double d_kk_error = test::norm_relative_error(rows[1].cpu().to(at::kDouble), d_kk);
    const double rounding = test::norm_relative_error(d_kk.to(at::kBFloat16).to(at::kDouble), d_kk);
    std::cout << "[kernels][gdn] gates from bf16 rows, " << shape << ": d_kk vs float64 " << d_kk_error
              << " (float64 rounded to bf16 " << rounding << ")" << std::endl;
    CHECK(d_kk_error <= 1.25 * rounding);
    CHECK(at::equal(rows[0], given[0]));
  }
  // Not bf16 rows of a head dim it takes: the predicate says so and the launch refuses with what it wants.
  const at::Tensor q48 = key_rows(1, 1, 1, 48, false);
  CHECK_FALSE(kernels::detail::gdn_backward_key_rows_apply(q48, q48));
  CHECK_FALSE(kernels::detail::gdn_backward_key_rows_apply(q48.to(at::kFloat), q48.to(at::kFloat)));
  const at::Tensor square = at::zeros({1, kChunk, kChunk}, f32), gates = at::zeros({1, kChunk}, f32);
  const at::Tensor square16 = square.to(at::kBFloat16);
  CHECK_THROWS_WITH(kernels::detail::launch_gdn_backward_gates_from_rows(square, {}, q48, q48, square16, square16,
                                                                         gates, gates, square16.clone(),
                                                                         square16.clone(), gates.clone(), gates.clone()),
                    Catch::Matchers::Contains("head dim 32, 64 or 128"));
  // Both d_scores and dO's and U's rows, or neither: refused.
  const at::Tensor q64 = key_rows(1, 1, 1, 64, false);
  const auto both_or_neither = [&](const at::Tensor& scores, const kernels::detail::GdnScoreRows& score_rows) {
    kernels::detail::launch_gdn_backward_gates_from_rows(scores, score_rows, q64, q64, square16, square16, gates,
                                                         gates, square16.clone(), square16.clone(), gates.clone(),
                                                         gates.clone());
  };
  CHECK_THROWS_WITH(both_or_neither(square, {q64, q64}), Catch::Matchers::Contains("either d_scores or dO's"));
  CHECK_THROWS_WITH(both_or_neither(at::Tensor(), {}), Catch::Matchers::Contains("either d_scores or dO's"));
  CHECK_THROWS_WITH(both_or_neither(at::Tensor(), {q64.to(at::kFloat), q64}),
                    Catch::Matchers::Contains("dO and U must be bf16 CUDA rows"));
}

// The backward's T with K K^T formed from k's bf16 rows in the inverse kernel: against float64's (I + A)^-1 of
// the same keys, within twice the error of the kernel given K K^T in float64 rounded to fp32 (and within 1e-5 of
// its T), and in bf16 within a quarter of float64's T rounded; the padding rows of a partial last chunk (keys,
// gates and beta zero) the identity's.
TEST_CASE("GDN backward inverse kernel: K K^T formed from bf16 rows gives float64's T", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::TensorOptions f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const int64_t B = 2, H = 2, N = 3, MN = B * H * N, valid = 23;
  for (const auto& [D, in_place] : {std::pair<int64_t, bool>{32, false}, {64, true}, {128, true}}) {
    at::manual_seed(120 + D);
    // unit-norm keys (as GDN's are), correlated: a strongly coupled A
    at::Tensor x = at::randn({B, N * kChunk, H, D}, at::kDouble);
    x = 0.8 * at::randn({B, 1, H, D}, at::kDouble) + 0.2 * x;
    x = x / x.norm(2, -1, true);
    x.select(0, B - 1).narrow(0, N * kChunk - (kChunk - valid), kChunk - valid).zero_();
    const at::Tensor stored = x.to(at::kBFloat16).to(at::kCUDA);
    const at::Tensor rows = stored.unflatten(1, {N, kChunk}).permute({0, 3, 1, 2, 4});
    const at::Tensor k = in_place ? rows : rows.contiguous();
    at::Tensor g = -at::rand({MN, kChunk}, f32) * 0.2, beta = at::rand({MN, kChunk}, f32);
    for (int64_t h = 0; h < H; ++h) {  // the last chunk of batch entry B - 1, every head
      const int64_t last = ((B - 1) * H + h) * N + N - 1;
      g.select(0, last).narrow(0, valid, kChunk - valid).zero_();
      beta.select(0, last).narrow(0, valid, kChunk - valid).zero_();
    }
    const at::Tensor kk64 = gram64(k, k);
    const at::Tensor gamma = at::cumsum(g.cpu().to(at::kDouble), -1);
    const at::Tensor decay = at::exp(gamma.unsqueeze(-1) - gamma.unsqueeze(-2));
    const at::Tensor A = (beta.cpu().to(at::kDouble).unsqueeze(-1) * kk64 * decay).tril(-1);
    const at::Tensor reference = at::linalg_inv(A + at::eye(kChunk, A.options()));
    const at::Tensor ours = kernels::new_output({MN, kChunk, kChunk}, f32);
    kernels::detail::launch_gdn_backward_inverse_from_rows(k, g, beta, ours);
    const at::Tensor given = kernels::new_output({MN, kChunk, kChunk}, f32);
    kernels::detail::launch_gdn_backward_inverse(kk64.to(f32), g, beta, given);
    const double vs_f64 = test::norm_relative_error(ours.cpu().to(at::kDouble), reference);
    const double given_vs_f64 = test::norm_relative_error(given.cpu().to(at::kDouble), reference);
    const double vs_given = test::norm_relative_error(ours.cpu().to(at::kDouble), given.cpu().to(at::kDouble));
    std::cout << "[kernels][gdn] backward inverse from bf16 rows, D = " << D << ": T vs float64 " << vs_f64
              << " (given K K^T " << given_vs_f64 << "), vs that T " << vs_given << std::endl;
    CHECK(vs_f64 <= std::max(1e-6, 2 * given_vs_f64));
    CHECK(vs_given <= 1e-5);
    const at::Tensor ours_bf16 = kernels::new_output({MN, kChunk, kChunk}, f32.dtype(at::kBFloat16));
    kernels::detail::launch_gdn_backward_inverse_from_rows(k, g, beta, ours_bf16);
    const double bf16_vs_f64 = test::norm_relative_error(ours_bf16.cpu().to(at::kDouble), reference);
    const double rounding = test::norm_relative_error(reference.to(at::kBFloat16).to(at::kDouble), reference);
    CHECK(bf16_vs_f64 <= 1.25 * rounding);
    for (const at::Tensor& T : {ours.cpu(), ours_bf16.cpu().to(at::kFloat)}) {
      const at::Tensor padding = T.select(0, (B * H - 1) * N + N - 1).narrow(0, valid, kChunk - valid);
      CHECK(at::equal(padding, at::eye(kChunk, at::kFloat).narrow(0, valid, kChunk - valid)));
    }
  }
}

// Training's bf16 prep writes each chunk's T rounded to bf16 (the hi part of the T it splits for W and U'), which
// the backward's bf16 products then read instead of forming T again: as near float64's T of the same bf16 keys
// as float64's own T rounded to bf16 (within a quarter of that rounding), the padding rows of a partial last
// chunk the identity's. T goes to memory only beside the split inverse.
TEST_CASE("GDN bf16 forward for training: prep keeps T within bf16 rounding of float64", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::TensorOptions f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const at::TensorOptions bf16 = f32.dtype(at::kBFloat16);
  const int64_t B = 2, H = 2, T = 3 * kChunk - 41, N = 3, M = B * H;
  for (const int64_t D : {32, 64, 128}) {
    at::manual_seed(150 + D);
    at::Tensor keys = at::randn({B, T, H, D}, at::kDouble);
    keys = 0.6 * at::randn({B, 1, H, D}, at::kDouble) + 0.4 * keys;  // correlated: a strongly coupled A
    const at::Tensor k = (keys / keys.norm(2, -1, true)).to(bf16);
    const at::Tensor q = at::randn({B, T, H, D}, bf16), v = at::randn({B, T, H, D}, bf16);
    const at::Tensor g = -at::rand({B, T, H}, f32) * 0.2, beta = at::rand({B, T, H}, f32);
    kernels::detail::GdnForwardBf16Scratch scratch;  // the split walk's, as training keeps it
    scratch.w = kernels::new_output({M, N, kChunk, D}, bf16), scratch.u = kernels::new_output({M, N, kChunk, D}, bf16);
    scratch.k_decayed = kernels::new_output({M, N, kChunk, D}, bf16);
    scratch.decay = kernels::new_output({M, N}, f32), scratch.states = kernels::new_output({M, N, D, D}, bf16);
    scratch.inverse = kernels::new_output({M, N, kChunk, kChunk}, bf16);
    const at::Tensor o = kernels::new_output({B, T, H, D}, bf16), final_state = kernels::new_output({M, D, D}, f32);
    scratch.split_inverse = false;
    CHECK_THROWS_WITH(kernels::detail::launch_gdn_forward_bf16(q, k, v, g, beta, at::Tensor(), at::Tensor(), scratch,
                                                               final_state, o),
                      Catch::Matchers::Contains("only from the split inverse"));
    scratch.split_inverse = true;
    kernels::detail::launch_gdn_forward_bf16(q, k, v, g, beta, at::Tensor(), at::Tensor(), scratch, final_state, o);
    // float64 of the same inputs, per chunk [M*N, 64, ...] with the rows past T zero
    const auto per_chunk = [&](const at::Tensor& x) {
      at::Tensor padded = at::zeros({B, N * kChunk, H, x.dim() == 4 ? x.size(3) : 1}, at::kDouble);
      padded.narrow(1, 0, T).copy_(x.dim() == 4 ? x.cpu() : x.cpu().unsqueeze(-1));
      return padded.unflatten(1, {N, kChunk}).permute({0, 3, 1, 2, 4}).reshape({M * N, kChunk, -1});
    };
    const at::Tensor kc = per_chunk(k), gc = per_chunk(g).squeeze(-1), bc = per_chunk(beta).squeeze(-1);
    const at::Tensor gamma = at::cumsum(gc, -1);
    const at::Tensor decay = at::exp(gamma.unsqueeze(-1) - gamma.unsqueeze(-2));
    const at::Tensor A = (bc.unsqueeze(-1) * at::matmul(kc, kc.transpose(-1, -2)) * decay).tril(-1);
    const at::Tensor reference = at::linalg_inv(A + at::eye(kChunk, A.options()));
    const at::Tensor got = scratch.inverse.cpu().to(at::kDouble).reshape({M * N, kChunk, kChunk});
    const double vs_f64 = test::norm_relative_error(got, reference);
    const double rounding = test::norm_relative_error(reference.to(at::kBFloat16).to(at::kDouble), reference);
    std::cout << "[kernels][gdn] training's prep keeps T, D = " << D << ": vs float64 " << vs_f64
              << " (float64 rounded to bf16 " << rounding << ")" << std::endl;
    CHECK(vs_f64 <= 1.25 * rounding);
    const int64_t valid = T - (N - 1) * kChunk;
    for (int64_t m = 0; m < M; ++m)
      CHECK(at::equal(got.select(0, m * N + N - 1).narrow(0, valid, kChunk - valid),
                      at::eye(kChunk, at::kDouble).narrow(0, valid, kChunk - valid)));
  }
}

// The value side in one kernel (launch_gdn_backward_value): dW = -dU S^T, dT = dU (diag(beta) V)^T + dW
// (diag(beta e^Gamma) K)^T, dV = diag(beta) T^T dU in the gradients' layout and its rows' dots with v, against the
// three chunk_gemm launches it replaces on the same bf16 operands (dW, dT, dV and the dots bit for bit) and against
// float64 sums of those operands (each within twice float64's own rounding to bf16; the dots within 1e-5). Head
// dims 32, 64 and 128; v and k as strided views of time-major tensors and as per-chunk copies; dV bf16 and fp32;
// outputs poisoned.
TEST_CASE("GDN backward value kernel: dW dT and dV are chunk_gemm's products and near float64",
          "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  using kernels::GemmTerm;
  const auto bf16_products = kernels::GemmPrecision::Bf16;
  const at::TensorOptions f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const at::TensorOptions bf16 = f32.dtype(at::kBFloat16);
  const int64_t B = 2, H = 3, N = 3, M = B * H, MN = M * N;
  for (const auto& [D, in_place, dv_bf16] : {std::tuple<int64_t, bool, bool>{32, false, true}, {64, true, false},
                                             {128, true, true}, {128, false, false}}) {
    at::manual_seed(150 + D + (in_place ? 1 : 0));
    const int64_t tiles = (D + 63) / 64;
    const at::Tensor v = key_rows(B, N, H, D, in_place), k = key_rows(B, N, H, D, in_place);
    const at::Tensor d_u = at::randn({B, H, N, kChunk, D}, f32).to(at::kBFloat16);
    const at::Tensor S = (0.2 * at::randn({B, H, N, D, D}, f32)).to(at::kBFloat16);
    const at::Tensor T =
        (0.3 * at::randn({B, H, N, kChunk, kChunk}, f32).tril(-1) + at::eye(kChunk, f32)).to(at::kBFloat16);
    const at::Tensor beta = at::rand({B, H, N, kChunk}, f32);
    const at::Tensor e_gamma = at::exp(at::cumsum(-at::rand({B, H, N, kChunk}, f32) / 10, -1));
    const at::TensorOptions dv_type = dv_bf16 ? bf16 : f32;
    const auto gradient = [&]() { return kernels::new_output({B, N * kChunk, H, D}, dv_type); };
    const auto per_chunk = [&](const at::Tensor& x) { return x.unflatten(1, {N, kChunk}).permute({0, 3, 1, 2, 4}); };
    const auto chunks = [&](const at::Tensor& x) { return x.reshape({MN, x.size(-2), x.size(-1)}); };
    // the kernel
    kernels::detail::GdnBackwardValue value;
    value.d_u = chunks(d_u), value.states = chunks(S), value.inverse = chunks(T), value.v = v, value.k = k;
    value.beta = beta.view({MN, kChunk}), value.e_gamma = e_gamma.view({MN, kChunk});
    value.d_w = kernels::new_output({MN, kChunk, D}, bf16);
    value.d_inverse = kernels::new_output({MN, kChunk, kChunk}, bf16);
    const at::Tensor dv = gradient();
    value.dv = per_chunk(dv);
    value.v_dots = kernels::new_output({MN, tiles, kChunk}, f32);
    REQUIRE(kernels::detail::gdn_backward_value_apply(value.d_u, value.states, v, k));
    kernels::detail::launch_gdn_backward_value(value);
    // chunk_gemm's launches, as the backward makes them
    const at::Tensor d_w = kernels::chunk_matmul_sum({GemmTerm(d_u, S.transpose(-1, -2), -1.0)}, bf16_products,
                                                     at::kBFloat16);
    const std::vector<GemmTerm> dt_terms{GemmTerm(d_u, v.transpose(-1, -2), 1.0, beta),
                                         GemmTerm(d_w, k.transpose(-1, -2), 1.0, beta * e_gamma)};
    REQUIRE(kernels::chunk_gemm_sum_apply(at::empty({B, H, N, kChunk, kChunk}, bf16), dt_terms, bf16_products));
    const at::Tensor d_inverse = kernels::chunk_matmul_sum(dt_terms, bf16_products, at::kBFloat16);
    const at::Tensor dv_products = gradient(), v_dots = kernels::new_output({B, H, N, tiles, kChunk}, f32);
    GemmTerm dv_term(T.transpose(-1, -2), d_u);
    dv_term.row_scale = beta, dv_term.dot_with = v, dv_term.dots = v_dots;
    at::Tensor dv_out = per_chunk(dv_products);
    REQUIRE(kernels::chunk_gemm_sum_apply(dv_out, {dv_term}, bf16_products));
    kernels::chunk_gemm_sum(dv_out, {dv_term}, 0.0, bf16_products);
    const std::string shape = "D = " + std::to_string(D) + (in_place ? " (strided)" : " (copies)") +
                              (dv_bf16 ? ", bf16 dV" : ", fp32 dV");
    CHECK(at::equal(value.d_w, chunks(d_w)));
    CHECK(at::equal(dv, dv_products));
    CHECK(at::equal(value.v_dots, v_dots.view({MN, tiles, kChunk})));
    CHECK(at::equal(value.d_inverse, chunks(d_inverse)));
    // float64 of the same operands (dT's second term from the kernel's dW)
    const auto f64 = [](const at::Tensor& x) { return x.cpu().to(at::kDouble); };
    const at::Tensor du64 = f64(d_u), beta64 = f64(beta).unsqueeze(-1), dw_kernel = f64(value.d_w).view(du64.sizes());
    const at::Tensor dw64 = -at::matmul(du64, f64(S).transpose(-1, -2));
    const at::Tensor dt64 = at::matmul(du64, (beta64 * f64(v)).transpose(-1, -2)) +
                            at::matmul(dw_kernel, (beta64 * f64(e_gamma).unsqueeze(-1) * f64(k)).transpose(-1, -2));
    const at::Tensor tdu64 = at::matmul(f64(T).transpose(-1, -2), du64);
    const at::Tensor dots64 = (tdu64 * f64(v)).unflatten(-1, {tiles, D / tiles}).sum(-1).transpose(-1, -2);
    for (const auto& [name, got, want] :
         {std::tuple{"dW", f64(value.d_w).view(du64.sizes()), dw64},
          {"dT", f64(value.d_inverse).view(dt64.sizes()), dt64},
          {"dV", f64(per_chunk(dv)), beta64 * tdu64}}) {
      const double error = test::norm_relative_error(got, want);
      const double rounding = test::norm_relative_error(want.to(at::kBFloat16).to(at::kDouble), want);
      std::cout << "[kernels][gdn] backward value kernel, " << shape << ": " << name << " vs float64 " << error
                << " (float64 rounded to bf16 " << rounding << ")" << std::endl;
      CHECK(error <= 2 * rounding);
    }
    const double dots_error = test::norm_relative_error(f64(value.v_dots).view(dots64.sizes()), dots64);
    std::cout << "[kernels][gdn] backward value kernel, " << shape << ": dV's dots with v vs float64 " << dots_error
              << std::endl;
    CHECK(dots_error <= 1e-5);
  }
  // Operands it does not take: the predicate says so and the launch refuses with what it wants.
  const at::Tensor v48 = key_rows(1, 1, 1, 48, false);
  const at::Tensor d_u48 = at::zeros({1, kChunk, 48}, bf16), s48 = at::zeros({1, 48, 48}, bf16);
  CHECK_FALSE(kernels::detail::gdn_backward_value_apply(d_u48, s48, v48, v48));
  const at::Tensor v32 = key_rows(1, 1, 1, 32, false);
  const at::Tensor d_u32 = at::zeros({1, kChunk, 32}, bf16), s32 = at::zeros({1, 32, 32}, bf16);
  CHECK(kernels::detail::gdn_backward_value_apply(d_u32, s32, v32, v32));
  CHECK_FALSE(kernels::detail::gdn_backward_value_apply(d_u32.to(at::kFloat), s32, v32, v32));
  CHECK_FALSE(kernels::detail::gdn_backward_value_apply(d_u32, s32.narrow(0, 0, 0), v32, v32));
  kernels::detail::GdnBackwardValue refused;
  refused.d_u = d_u48, refused.states = s48, refused.v = v48, refused.k = v48;
  CHECK_THROWS_WITH(kernels::detail::launch_gdn_backward_value(refused),
                    Catch::Matchers::Contains("head dim 32, 64 or 128"));
}

// dq and dk in one kernel each (launch_gdn_backward_query_key): dq = d(QK^T) K + diag(e^Gamma) dO S^T and dk =
// d(QK^T)^T Q + d(KK^T)^T K + diag(beta e^Gamma) T^T dW + diag(e^{Gamma_C - Gamma}) U G^T in the gradients' layout,
// with their rows' dots, against the two chunk_gemm sums they replace as the backward makes them (bit for bit) and
// against float64 sums of the same operands (within twice float64's own rounding to bf16; the dots within 1e-5).
// Head dims 32, 64 and 128; q, k and dO as strided views of time-major tensors and as per-chunk copies; dq and dk
// bf16 and fp32; outputs poisoned.
TEST_CASE("GDN backward query key kernel: dq and dk are chunk_gemm's sums and near float64", "[kernels][gdn][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  using kernels::GemmTerm;
  const auto bf16_products = kernels::GemmPrecision::Bf16;
  const at::TensorOptions f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const at::TensorOptions bf16 = f32.dtype(at::kBFloat16);
  const int64_t B = 2, H = 3, N = 3, M = B * H, MN = M * N;
  for (const auto& [D, in_place, out_bf16] : {std::tuple<int64_t, bool, bool>{32, false, true}, {64, true, false},
                                              {128, true, true}, {128, false, false}}) {
    at::manual_seed(170 + D + (in_place ? 1 : 0));
    const int64_t tiles = (D + 63) / 64;
    const at::Tensor q = key_rows(B, N, H, D, in_place), k = key_rows(B, N, H, D, in_place);
    const at::Tensor d_o = key_rows(B, N, H, D, in_place);
    const auto random = [&](std::vector<int64_t> sizes, double scale) {
      return (scale * at::randn(sizes, f32)).to(at::kBFloat16);
    };
    const at::Tensor d_qk = random({B, H, N, kChunk, kChunk}, 1.0), d_kk = random({B, H, N, kChunk, kChunk}, 1.0);
    const at::Tensor T =
        (0.3 * at::randn({B, H, N, kChunk, kChunk}, f32).tril(-1) + at::eye(kChunk, f32)).to(at::kBFloat16);
    const at::Tensor S = random({B, H, N, D, D}, 0.2), G = random({B, H, N, D, D}, 0.2);
    const at::Tensor U = random({B, H, N, kChunk, D}, 1.0), d_w = random({B, H, N, kChunk, D}, 1.0);
    const at::Tensor gamma = at::cumsum(-at::rand({B, H, N, kChunk}, f32) / 10, -1);
    const at::Tensor e_gamma = at::exp(gamma), k_scale = at::rand({B, H, N, kChunk}, f32) * e_gamma;
    const at::Tensor to_end = at::exp(gamma.narrow(-1, kChunk - 1, 1) - gamma);
    const at::TensorOptions out_type = out_bf16 ? bf16 : f32;
    const auto gradient = [&]() { return kernels::new_output({B, N * kChunk, H, D}, out_type); };
    const auto per_chunk = [&](const at::Tensor& x) { return x.unflatten(1, {N, kChunk}).permute({0, 3, 1, 2, 4}); };
    const auto chunks = [&](const at::Tensor& x) { return x.reshape({MN, x.size(-2), x.size(-1)}); };
    const auto dots = [&]() { return kernels::new_output({B, H, N, tiles, kChunk}, f32); };
    // the kernels
    const at::Tensor dq = gradient(), dk = gradient();
    const at::Tensor q_dots = dots(), k_in_dots = dots(), k_decayed_dots = dots();
    const auto steps = [&](const at::Tensor& x) { return x.view({MN, kChunk}); };
    const kernels::detail::GdnBackwardQueryKey query_key{
        q,          k,          d_o,          chunks(d_qk),       chunks(d_kk),   chunks(T),
        chunks(S),  chunks(G),  chunks(U),    chunks(d_w),        steps(e_gamma), steps(k_scale),
        steps(to_end), per_chunk(dq), per_chunk(dk), chunks(q_dots), chunks(k_in_dots), chunks(k_decayed_dots)};
    REQUIRE(kernels::detail::gdn_backward_query_key_apply(query_key));
    kernels::detail::launch_gdn_backward_query_key(query_key);
    // chunk_gemm's two sums, as the backward makes them
    const at::Tensor dq_sums = gradient(), dk_sums = gradient();
    const at::Tensor q_dots_sums = dots(), k_in_dots_sums = dots(), k_decayed_dots_sums = dots();
    const auto term = [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_scale = at::Tensor(),
                         const at::Tensor& dot_with = at::Tensor(), const at::Tensor& dots_out = at::Tensor()) {
      GemmTerm t(a, b);
      t.row_scale = row_scale, t.dot_with = dot_with, t.dots = dots_out;
      return t;
    };
    const std::vector<GemmTerm> dq_terms{term(d_qk, k),
                                         term(d_o, S.transpose(-1, -2), e_gamma, q, q_dots_sums)};
    const std::vector<GemmTerm> dk_terms{term(d_qk.transpose(-1, -2), q), term(d_kk.transpose(-1, -2), k),
                                         term(T.transpose(-1, -2), d_w, k_scale, k, k_in_dots_sums),
                                         term(U, G.transpose(-1, -2), to_end, k, k_decayed_dots_sums)};
    for (const auto& [out, terms] : {std::pair{per_chunk(dq_sums), dq_terms}, {per_chunk(dk_sums), dk_terms}}) {
      at::Tensor into = out;
      REQUIRE(kernels::chunk_gemm_sum_apply(into, terms, bf16_products));
      kernels::chunk_gemm_sum(into, terms, 0.0, bf16_products);
    }
    const std::string shape = "D = " + std::to_string(D) + (in_place ? " (strided)" : " (copies)") +
                              (out_bf16 ? ", bf16 dq and dk" : ", fp32 dq and dk");
    CHECK(at::equal(dq, dq_sums));
    CHECK(at::equal(dk, dk_sums));
    CHECK(at::equal(q_dots, q_dots_sums));
    CHECK(at::equal(k_in_dots, k_in_dots_sums));
    CHECK(at::equal(k_decayed_dots, k_decayed_dots_sums));
    // float64 of the same operands
    const auto f64 = [](const at::Tensor& x) { return x.cpu().to(at::kDouble); };
    const auto col = [&](const at::Tensor& x) { return f64(x).unsqueeze(-1); };
    const auto t64 = [&](const at::Tensor& x) { return f64(x).transpose(-1, -2); };
    const at::Tensor o_s = at::matmul(f64(d_o), t64(S)), t_dw = at::matmul(t64(T), f64(d_w));
    const at::Tensor u_g = at::matmul(f64(U), t64(G));
    const at::Tensor dq64 = at::matmul(f64(d_qk), f64(k)) + col(e_gamma) * o_s;
    const at::Tensor dk64 = at::matmul(t64(d_qk), f64(q)) + at::matmul(t64(d_kk), f64(k)) + col(k_scale) * t_dw +
                            col(to_end) * u_g;
    for (const auto& [name, got, want] :
         {std::tuple{"dq", f64(per_chunk(dq)), dq64}, {"dk", f64(per_chunk(dk)), dk64}}) {
      const double error = test::norm_relative_error(got, want);
      const double rounding = test::norm_relative_error(want.to(at::kBFloat16).to(at::kDouble), want);
      std::cout << "[kernels][gdn] backward query key kernel, " << shape << ": " << name << " vs float64 " << error
                << " (float64 rounded to bf16 " << rounding << ")" << std::endl;
      CHECK(error <= 2 * rounding);
    }
    const auto dots64 = [&](const at::Tensor& product, const at::Tensor& with) {
      return (product * f64(with)).unflatten(-1, {tiles, D / tiles}).sum(-1).transpose(-1, -2);
    };
    for (const auto& [name, got, want] : {std::tuple{"q_dots", q_dots, dots64(o_s, q)},
                                          {"k_in_dots", k_in_dots, dots64(t_dw, k)},
                                          {"k_decayed_dots", k_decayed_dots, dots64(u_g, k)}}) {
      const double error = test::norm_relative_error(f64(got), want);
      std::cout << "[kernels][gdn] backward query key kernel, " << shape << ": " << name << " vs float64 " << error
                << std::endl;
      CHECK(error <= 1e-5);
    }
  }
  // Operands it does not take: the predicate says so and the launch refuses with what it wants.
  const at::Tensor q48 = key_rows(1, 1, 1, 48, false);
  kernels::detail::GdnBackwardQueryKey refused;
  refused.q = q48, refused.k = q48, refused.d_o = q48;
  CHECK_FALSE(kernels::detail::gdn_backward_query_key_apply(refused));
  CHECK_THROWS_WITH(kernels::detail::launch_gdn_backward_query_key(refused),
                    Catch::Matchers::Contains("head dim 32, 64 or 128"));
  const at::Tensor q32 = key_rows(1, 1, 1, 32, false);
  const auto zeros = [&](std::vector<int64_t> sizes) { return at::zeros(sizes, bf16); };
  kernels::detail::GdnBackwardQueryKey taken;
  taken.q = q32, taken.k = q32, taken.d_o = q32;
  taken.d_qk = zeros({1, kChunk, kChunk}), taken.d_kk = taken.d_qk, taken.inverse = taken.d_qk;
  taken.states = zeros({1, 32, 32}), taken.grads_after = taken.states;
  taken.u = zeros({1, kChunk, 32}), taken.d_w = taken.u;
  CHECK(kernels::detail::gdn_backward_query_key_apply(taken));
  kernels::detail::GdnBackwardQueryKey fp32_state = taken;
  fp32_state.states = taken.states.to(at::kFloat);
  CHECK_FALSE(kernels::detail::gdn_backward_query_key_apply(fp32_state));
  kernels::detail::GdnBackwardQueryKey strided_u = taken;
  strided_u.u = zeros({1, 32, kChunk}).transpose(-1, -2);
  CHECK_FALSE(kernels::detail::gdn_backward_query_key_apply(strided_u));
}
#endif
