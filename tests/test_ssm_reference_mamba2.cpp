// Checks of the float64 references, part two: Mamba-2 against its closed forms, the GQA head
// mapping of all three mixers, causality / batch independence, and input validation.
#include <catch2/catch.hpp>

#include "reference/random_weights.h"
#include "reference/ssm_reference.h"

#include <cmath>
#include <functional>
#include <limits>
#include <random>

namespace ref = prime::reference;
using ref::testing::random_normal;

namespace {

double relative_max_error(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual - expected).abs().max().item<double>() / expected.abs().max().item<double>();
}

at::Tensor rms_norm(const at::Tensor& v, const at::Tensor& weight, double eps) {
  return v * at::rsqrt(v.pow(2).mean(-1, true) + eps) * weight;
}

// What Mamba-2's scan consumes, computed with LibTorch ops for one sequence u [T,d]:
// x, B expanded to H heads, C, z, Delta.
struct Mamba2Inputs {
  at::Tensor x, B, C, z, delta;  // [T,H,D] x4, [T,H]
};

Mamba2Inputs mamba2_inputs_by_hand(const ref::Mamba2Dims& dims, const ref::Weights& w,
                                   const at::Tensor& u) {
  const int64_t T = u.size(0), D = dims.head_dim, Hq = dims.num_q_heads,
                Hkv = dims.num_kv_heads, H = Hq, groups = Hq / Hkv;
  const at::Tensor projected = u.matmul(w.at("in_proj.weight").t());
  const std::vector<at::Tensor> parts =
      projected.split_with_sizes({Hq * D, Hkv * D, Hkv * D, Hq * D, H}, 1);
  const at::Tensor B = rms_norm(parts[2].view({T, Hkv, D}), w.at("B_norm.weight"), dims.bc_norm_eps);
  const at::Tensor C = rms_norm(parts[3].view({T, Hq, D}), w.at("C_norm.weight"), dims.bc_norm_eps);
  at::Tensor xbc = at::cat({parts[1], B.reshape({T, -1}), C.reshape({T, -1})}, 1);
  const at::Tensor conv_weight = w.at("conv1d.weight");
  const int64_t kernel = conv_weight.size(2);
  xbc = at::conv1d(xbc.t().unsqueeze(0), conv_weight, w.at("conv1d.bias"), 1, kernel - 1, 1,
                   xbc.size(1));
  xbc = at::silu(xbc.squeeze(0).narrow(1, 0, T).t());
  const std::vector<at::Tensor> conv_parts = xbc.split_with_sizes({Hkv * D, Hkv * D, Hq * D}, 1);
  Mamba2Inputs in;
  in.x = conv_parts[0].view({T, Hkv, D}).repeat_interleave(groups, 1);
  in.B = conv_parts[1].view({T, Hkv, D}).repeat_interleave(groups, 1);
  in.C = conv_parts[2].view({T, Hq, D});
  in.z = parts[0].view({T, Hq, D});
  in.delta = at::softplus(parts[4] + w.at("dt_bias"));
  return in;
}

// y [T,H,D] -> gate with SiLU(z), RMSNorm per head (gate then normalise), out_proj.
at::Tensor mamba2_output_by_hand(const ref::Mamba2Dims& dims, const ref::Weights& w,
                                 const Mamba2Inputs& in, const at::Tensor& y) {
  const int64_t T = y.size(0), H = y.size(1), D = y.size(2);
  const at::Tensor gated = y * at::silu(in.z);
  const at::Tensor normed = rms_norm(gated, w.at("norm.weight").view({H, D}), dims.norm_eps);
  return normed.reshape({T, H * D}).matmul(w.at("out_proj.weight").t());
}

ref::Mamba2Dims tiny_mamba2_dims() {
  ref::Mamba2Dims dims;
  dims.hidden = 6;
  dims.head_dim = 4;
  dims.num_q_heads = 4;
  dims.num_kv_heads = 2;
  return dims;
}

}  // namespace

TEST_CASE("Mamba-2 reference with zero decay is a per-token closed form", "[reference]") {
  // A_log huge makes e^{Delta A} = 0, so h_t = Delta_t x_t B_t^T and
  // y_t = Delta_t (B_t . C_t) x_t + D x_t: no memory of earlier tokens beyond the conv.
  std::mt19937_64 rng(21);
  const ref::Mamba2Dims dims = tiny_mamba2_dims();
  ref::Weights w = ref::testing::random_mamba2_weights(dims, rng);
  w["A_log"] = at::full({dims.num_q_heads}, 60.0, at::kDouble);
  const at::Tensor x = random_normal({1, 7, dims.hidden}, 1.0, rng);
  const Mamba2Inputs in = mamba2_inputs_by_hand(dims, w, x[0]);
  const at::Tensor b_dot_c = (in.B * in.C).sum(-1, true);  // [T,H,1]
  const at::Tensor y = in.delta.unsqueeze(-1) * b_dot_c * in.x + w.at("D").view({-1, 1}) * in.x;
  const at::Tensor expected = mamba2_output_by_hand(dims, w, in, y).unsqueeze(0);
  REQUIRE(expected.abs().max().item<double>() > 1e-3);
  CHECK(relative_max_error(ref::mamba2_forward(dims, w, x), expected) < 1e-12);
}

TEST_CASE("Mamba-2 reference equals the quadratic (SSD) form", "[reference]") {
  // y_t = sum_{s<=t} exp(A (cum_t - cum_s)) Delta_s (C_t . B_s) x_s + D x_t, cum = cumsum Delta.
  std::mt19937_64 rng(22);
  const ref::Mamba2Dims dims = tiny_mamba2_dims();
  const ref::Weights w = ref::testing::random_mamba2_weights(dims, rng);
  const int64_t T = 9, H = dims.num_q_heads;
  const at::Tensor x = random_normal({1, T, dims.hidden}, 1.0, rng);
  const Mamba2Inputs in = mamba2_inputs_by_hand(dims, w, x[0]);
  const at::Tensor A = -w.at("A_log").exp();
  const at::Tensor cum = in.delta.cumsum(0);                       // [T,H]
  const at::Tensor future = at::ones({T, T}, at::kBool).triu(1);  // s > t
  at::Tensor y = at::empty({T, H, dims.head_dim}, at::kDouble);
  for (int64_t h = 0; h < H; ++h) {
    const at::Tensor c = cum.select(1, h);
    const at::Tensor log_decay = (A[h] * (c.unsqueeze(1) - c.unsqueeze(0))).masked_fill(
        future, -std::numeric_limits<double>::infinity());
    const at::Tensor scores = in.C.select(1, h).matmul(in.B.select(1, h).t());  // [t,s]
    const at::Tensor mix = log_decay.exp() * scores * in.delta.select(1, h).unsqueeze(0);
    y.select(1, h).copy_(mix.matmul(in.x.select(1, h)) + w.at("D")[h] * in.x.select(1, h));
  }
  const at::Tensor expected = mamba2_output_by_hand(dims, w, in, y).unsqueeze(0);
  CHECK(relative_max_error(ref::mamba2_forward(dims, w, x), expected) < 1e-12);
}

// ---- GQA head mapping ------------------------------------------------------------------------

namespace {

// hidden = H*D and an identity output projection, so output block e is expanded head e.
// Returns, per expanded head, the largest |output| over all tokens.
std::vector<double> per_head_response(const at::Tensor& out, int64_t heads, int64_t D) {
  std::vector<double> response;
  for (int64_t e = 0; e < heads; ++e)
    response.push_back(out.narrow(2, e * D, D).abs().max().item<double>());
  return response;
}

void check_only_first_group_responds(const std::vector<double>& response, int64_t groups) {
  for (size_t e = 0; e < response.size(); ++e) {
    INFO("expanded head " << e << " max |out| = " << response[e]);
    if (static_cast<int64_t>(e) < groups) CHECK(response[e] > 1e-3);
    else CHECK(response[e] == 0.0);
  }
}

// Zero the rows of kv heads >= 1 in a [Hkv*D, ...] block starting at `first_row`.
void zero_kv_heads_after_first(at::Tensor& weight, int64_t first_row, int64_t Hkv, int64_t D) {
  weight.narrow(0, first_row + D, (Hkv - 1) * D).zero_();
}

}  // namespace

TEST_CASE("References expand kv heads by repeat-interleave", "[reference]") {
  // Hq = 6, Hkv = 2, G = 3: with only kv head 0 alive, expanded heads 0..2 respond and 3..5
  // are exactly zero (tiling would light up heads 0, 2, 4 instead).
  const int64_t D = 3, Hq = 6, Hkv = 2, H = 6, groups = 3, d = H * D;
  std::mt19937_64 rng(31);
  const at::Tensor x = random_normal({1, 5, d}, 1.0, rng);
  const at::Tensor identity = at::eye(d, at::kDouble);

  SECTION("GKA, ridge solve off, k and v of kv head 1 zero") {
    ref::GkaDims dims{d, D, Hq, Hkv};
    dims.ridge_solve = false;
    ref::Weights w = ref::testing::random_gka_weights(dims, rng);
    zero_kv_heads_after_first(w["k_proj.weight"], 0, Hkv, D);
    zero_kv_heads_after_first(w["v_proj.weight"], 0, Hkv, D);
    w["o_proj.weight"] = identity;
    check_only_first_group_responds(per_head_response(ref::gka_forward(dims, w, x), H, D), groups);
  }
  SECTION("GKA, ridge solve on, v of kv head 1 zero (k stays nonzero so the solve is defined)") {
    ref::GkaDims dims{d, D, Hq, Hkv};
    ref::Weights w = ref::testing::random_gka_weights(dims, rng);
    zero_kv_heads_after_first(w["v_proj.weight"], 0, Hkv, D);
    w["o_proj.weight"] = identity;
    check_only_first_group_responds(per_head_response(ref::gka_forward(dims, w, x), H, D), groups);
  }
  SECTION("GDN, k and v of kv head 1 zero") {
    ref::GdnDims dims{d, D, Hq, Hkv};
    ref::Weights w = ref::testing::random_gdn_weights(dims, rng);
    zero_kv_heads_after_first(w["k_proj.weight"], 0, Hkv, D);
    zero_kv_heads_after_first(w["v_proj.weight"], 0, Hkv, D);
    w["o_proj.weight"] = identity;
    check_only_first_group_responds(per_head_response(ref::gdn_forward(dims, w, x), H, D), groups);
  }
  SECTION("Mamba-2, x and B of kv head 1 zero (rows and conv bias)") {
    ref::Mamba2Dims dims{d, D, Hq, Hkv};
    ref::Weights w = ref::testing::random_mamba2_weights(dims, rng);
    const int64_t x_first = Hq * D, b_first = x_first + Hkv * D;
    zero_kv_heads_after_first(w["in_proj.weight"], x_first, Hkv, D);
    zero_kv_heads_after_first(w["in_proj.weight"], b_first, Hkv, D);
    zero_kv_heads_after_first(w["conv1d.bias"], 0, Hkv, D);          // x channels
    zero_kv_heads_after_first(w["conv1d.bias"], Hkv * D, Hkv, D);     // B channels
    w["out_proj.weight"] = identity;
    check_only_first_group_responds(per_head_response(ref::mamba2_forward(dims, w, x), H, D),
                                    groups);
  }
}

// ---- Causality, batch independence, validation -------------------------------------------------

TEST_CASE("References are causal and treat batch rows independently", "[reference]") {
  const int64_t d = 8, D = 4, Hq = 4, Hkv = 2, T = 7, cut = 4;
  std::mt19937_64 rng(41);
  using Forward = std::function<at::Tensor(const at::Tensor&)>;
  std::vector<std::pair<std::string, Forward>> mixers;
  const ref::GkaDims gka{d, D, Hq, Hkv};
  const ref::GdnDims gdn{d, D, Hq, Hkv};
  const ref::Mamba2Dims mamba2{d, D, Hq, Hkv};
  const ref::Weights gka_w = ref::testing::random_gka_weights(gka, rng);
  const ref::Weights gdn_w = ref::testing::random_gdn_weights(gdn, rng);
  const ref::Weights mamba2_w = ref::testing::random_mamba2_weights(mamba2, rng);
  mixers.emplace_back("GKA", [&](const at::Tensor& x) { return ref::gka_forward(gka, gka_w, x); });
  mixers.emplace_back("GDN", [&](const at::Tensor& x) { return ref::gdn_forward(gdn, gdn_w, x); });
  mixers.emplace_back("Mamba-2",
                      [&](const at::Tensor& x) { return ref::mamba2_forward(mamba2, mamba2_w, x); });

  const at::Tensor x = random_normal({2, T, d}, 1.0, rng);
  at::Tensor x_changed_future = x.clone();
  x_changed_future.narrow(1, cut, T - cut).copy_(random_normal({2, T - cut, d}, 1.0, rng));
  for (const auto& [name, forward] : mixers) {
    INFO(name);
    const at::Tensor out = forward(x);
    const at::Tensor out_changed = forward(x_changed_future);
    CHECK(at::equal(out.narrow(1, 0, cut), out_changed.narrow(1, 0, cut)));
    CHECK(!at::allclose(out.narrow(1, cut, T - cut), out_changed.narrow(1, cut, T - cut)));
    CHECK(at::equal(forward(x.narrow(0, 1, 1).contiguous()), out.narrow(0, 1, 1)));
  }
}

TEST_CASE("References reject missing weights and wrong dtypes", "[reference]") {
  std::mt19937_64 rng(51);
  const ref::GdnDims dims{6, 4, 2, 1};
  ref::Weights w = ref::testing::random_gdn_weights(dims, rng);
  const at::Tensor x = random_normal({1, 3, 6}, 1.0, rng);
  CHECK_NOTHROW(ref::gdn_forward(dims, w, x));
  CHECK_THROWS_WITH(ref::gdn_forward(dims, w, x.to(at::kFloat)), Catch::Contains("float64"));
  ref::Weights missing = w;
  missing.erase("gk_proj.weight");
  CHECK_THROWS_WITH(ref::gdn_forward(dims, missing, x), Catch::Contains("gk_proj.weight"));
  ref::Weights wrong_shape = w;
  wrong_shape["A_log"] = at::zeros({3}, at::kDouble);
  CHECK_THROWS_WITH(ref::gdn_forward(dims, wrong_shape, x), Catch::Contains("A_log"));
}
