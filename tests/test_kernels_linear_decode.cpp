// kernels/linear_decode: the decode projection y = x Wᵀ (+ bias), reached through model::linear,
// against a float64 reference on the CPU (from the same rounded inputs) and against at::linear on
// CUDA (policy Torch); 1 to 4 rows of x, K from one 16-byte pack to 12288 (partial and full trips
// of the loads), N from 1 to 4100 (one and two features per warp, odd N); bf16, fp16 and fp32,
// with and without bias; outputs poisoned first; operands it does not serve run at::linear; a CUDA
// graph replays it. The grouped form (model::linear_group) and the gated SwiGLU form
// (model::gated_linear_silu) the same ways, under both grids, plus their CPU fallbacks.
#include <catch2/catch.hpp>

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/linear_decode/linear_decode.h"
#include "model/linear.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

using namespace prime;

namespace {

// The float64 result on the CPU, and per output the size the fp32 sum's rounding scales with
// (sqrt(sum_k (x_k w_nk)^2), the spread of the terms): with N = 1 a sum that cancels to near zero
// would make any error relative to the output itself look large.
struct Reference {
  at::Tensor value, spread;  // [..., N] float64 on the CPU
};

// Worst over rows of max |got - want| / max(max |want|, max spread). A NaN (an element the kernel
// left poisoned) makes it NaN, which no bound accepts.
double row_relative_error(const at::Tensor& got, const Reference& want) {
  const int64_t N = want.value.size(-1);
  const at::Tensor a = got.to(at::kCPU, at::kDouble).reshape({-1, N});
  const at::Tensor b = want.value.reshape({-1, N});
  const at::Tensor scale = at::maximum(b.abs().amax(1), want.spread.reshape({-1, N}).amax(1));
  return ((a - b).abs().amax(1) / scale.clamp_min(1e-300)).max().item<double>();
}

// Against float64: the output's one rounding (bf16 2^-9, fp16 2^-11 of the largest element) plus
// fp32 sums of up to 12288 products.
double reference_bound(at::ScalarType type) {
  return type == at::kBFloat16 ? 4e-3 : type == at::kHalf ? 1e-3 : 1e-5;
}

// x @ weightᵀ + bias in float64 on the CPU.
Reference reference_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const at::Tensor xd = x.to(at::kCPU, at::kDouble), wd = weight.to(at::kCPU, at::kDouble);
  const at::Tensor y = at::matmul(xd, wd.t());
  return {bias.defined() ? y + bias.to(at::kCPU, at::kDouble) : y, at::matmul(xd * xd, (wd * wd).t()).sqrt()};
}

// Rows [0, rows) of a reference for [4, N], as [rows, 1, N]; bias added when defined.
Reference first_rows(const Reference& all, int64_t rows, const at::Tensor& bias) {
  const int64_t N = all.value.size(-1);
  const at::Tensor value = all.value.narrow(0, 0, rows).reshape({rows, 1, N});
  return {bias.defined() ? value + bias.to(at::kCPU, at::kDouble) : value,
          all.spread.narrow(0, 0, rows).reshape({rows, 1, N})};
}

std::string describe(at::ScalarType type, int64_t rows, int64_t K, int64_t N, bool bias) {
  std::ostringstream text;
  text << c10::toString(type) << " rows " << rows << " K " << K << " N " << N << (bias ? " bias" : "");
  return text.str();
}

// model::linear with the kernel (it must apply) against `want` (float64) and at::linear on CUDA.
void check_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const Reference& want,
                  const std::string& what) {
  INFO(what);
  REQUIRE(kernels::linear_decode_apply(x, weight, bias));
  const at::Tensor got = model::linear(x, weight, bias);
  at::Tensor torch_form;
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    REQUIRE_FALSE(kernels::linear_decode_apply(x, weight, bias));
    torch_form = model::linear(x, weight, bias);
  }
  REQUIRE(got.sizes() == torch_form.sizes());
  REQUIRE(got.scalar_type() == x.scalar_type());
  REQUIRE(got.is_contiguous());
  const double ours = row_relative_error(got, want), theirs = row_relative_error(torch_form, want);
  const double ours_norm = test::norm_relative_error(got, want.value);
  const double theirs_norm = test::norm_relative_error(torch_form, want.value);
  std::cout << "[kernels][linear] " << what << ": vs float64 " << ours << " (at::linear " << theirs
            << "), norm " << ours_norm << " (at::linear " << theirs_norm << ")\n";
  CHECK(ours <= reference_bound(x.scalar_type()));
  // In 16-bit types both are one rounding of nearly the same fp32 sum: the kernel's error may
  // not exceed twice at::linear's (the small term: an output of one element, where at::linear
  // may round exactly).
  if (x.scalar_type() != at::kFloat) CHECK(ours_norm <= 2 * theirs_norm + 1e-4);
}

void check_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const std::string& what) {
  check_linear(x, weight, bias, reference_linear(x, weight, bias), what);
}

}  // namespace

TEST_CASE("linear_decode kernel: never applies to CPU tensors, where model::linear is at::linear", "[kernels][linear]") {
  at::manual_seed(3);
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16, at::kDouble}) {
    INFO(c10::toString(type));
    const at::Tensor x = at::randn({1, 2, 16}).to(type), weight = at::randn({5, 16}).to(type);
    const at::Tensor bias = at::randn({5}).to(type);
    CHECK_FALSE(kernels::linear_decode_apply(x, weight, bias));
    CHECK(at::equal(model::linear(x, weight), at::linear(x, weight)));
    CHECK(at::equal(model::linear(x, weight, bias), at::linear(x, weight, bias)));
  }
}

TEST_CASE("linear_decode kernel: equals float64 and at::linear for 1 to 4 rows, every dtype, with and without bias",
          "[kernels][gpu][linear]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  at::NoGradGuard no_grad;
  at::manual_seed(29);
  const at::Device cuda(at::kCUDA);
  // K = 8 is one bf16 pack (two fp32 packs), 264 a partial trip of the loads, 4096 and 12288 full
  // trips. N = 1 and 7 leave most of a block's warps idle; on an H200 (132 SMs) 1024 takes one
  // feature per warp, 4100 two (4101: the last warp's second feature past the end).
  for (const at::ScalarType type : {at::kBFloat16, at::kFloat, at::kHalf}) {
    for (const int64_t K : {8, 264, 4096, 12288}) {
      for (const int64_t N : {1, 7, 1024, 4100, 4101}) {
        // fp16 is the bf16 path with another unpacking: its largest shapes add nothing.
        if ((type == at::kHalf && K == 12288) || (N == 4101 && K > 264)) continue;
        const auto options = at::TensorOptions().device(cuda).dtype(type);
        const at::Tensor weight = (at::randn({N, K}, cuda) / std::sqrt(static_cast<double>(K))).to(type);
        const at::Tensor bias = (0.1 * at::randn({N}, cuda)).to(type);
        const at::Tensor x_all = at::randn({4, K}, options);
        // The float64 products once for the four rows (the reference reads W on the CPU).
        const Reference want = reference_linear(x_all, weight, at::Tensor());
        for (int64_t rows = 1; rows <= 4; ++rows) {
          const at::Tensor x = x_all.narrow(0, 0, rows).reshape({rows, 1, K});  // [B, T = 1, K]
          check_linear(x, weight, at::Tensor(), first_rows(want, rows, at::Tensor()),
                       describe(type, rows, K, N, false));
          check_linear(x, weight, bias, first_rows(want, rows, bias), describe(type, rows, K, N, true));
        }
      }
    }
  }
}

TEST_CASE("linear_decode kernel: x of any shape and strides, misaligned x, outputs of at::linear's shape",
          "[kernels][gpu][linear]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(31);
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor weight = at::randn({300, 512}, options), bias = at::randn({300}, options);
  // 1-D x: [N] out. [2, 2, K]: four rows in two leading dims.
  check_linear(at::randn({512}, options), weight, bias, "1-D x");
  check_linear(at::randn({2, 2, 512}, options), weight, bias, "[2, 2, K]");
  // Non-contiguous x (every other column of a wider one; the rows of a transposed one).
  check_linear(at::randn({3, 1024}, options).narrow(1, 0, 1024).view({3, 512, 2}).select(2, 1), weight, bias,
               "strided x");
  check_linear(at::randn({512, 3}, options).t(), weight, bias, "transposed x");
  // Contiguous but one element into its storage: not 16-byte aligned (copied first).
  const at::Tensor offset = at::randn({1 + 2 * 512}, options).narrow(0, 1, 2 * 512).view({2, 512});
  check_linear(offset, weight, bias, "misaligned x");
  // A non-contiguous bias (every other element).
  check_linear(at::randn({1, 512}, options), weight, at::randn({600}, options).slice(0, 0, 600, 2), "strided bias");
}

TEST_CASE("linear_decode kernel: not taken beyond 4 rows, under autograd, for strided or misaligned W, K off the pack, mixed dtypes",
          "[kernels][gpu][linear]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const auto fp32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const at::Tensor x = at::randn({1, 1, 256}, bf16), weight = at::randn({64, 256}, bf16);
  const at::Tensor bias = at::randn({64}, bf16);
  {
    at::NoGradGuard no_grad;
    CHECK(kernels::linear_decode_apply(x, weight, bias));
    CHECK(kernels::linear_decode_apply(at::randn({4, 256}, bf16), weight, at::Tensor()));
    CHECK_FALSE(kernels::linear_decode_apply(at::randn({5, 256}, bf16), weight, bias));
    CHECK_FALSE(kernels::linear_decode_apply(at::randn({1, 5, 256}, bf16), weight, bias));
    CHECK_FALSE(kernels::linear_decode_apply(at::randn({0, 256}, bf16), weight, bias));
    // W strided (a transposed [K, N]; every other row) or starting off 16 bytes.
    CHECK_FALSE(kernels::linear_decode_apply(x, at::randn({256, 64}, bf16).t(), bias));
    CHECK_FALSE(kernels::linear_decode_apply(x, at::randn({128, 256}, bf16).slice(0, 0, 128, 2), bias));
    CHECK_FALSE(kernels::linear_decode_apply(
        x, at::randn({1 + 64 * 256}, bf16).narrow(0, 1, 64 * 256).view({64, 256}), bias));
    // K not a multiple of a 16-byte pack: 8 bf16, 4 fp32.
    CHECK_FALSE(kernels::linear_decode_apply(at::randn({1, 12}, bf16), at::randn({64, 12}, bf16), bias));
    CHECK_FALSE(kernels::linear_decode_apply(at::randn({1, 6}, fp32), at::randn({64, 6}, fp32), at::Tensor()));
    CHECK(kernels::linear_decode_apply(at::randn({1, 12}, fp32), at::randn({64, 12}, fp32), at::Tensor()));
    // Mixed or unserved dtypes; a bias of another size or dtype.
    CHECK_FALSE(kernels::linear_decode_apply(x, weight.to(at::kFloat), at::Tensor()));
    CHECK_FALSE(kernels::linear_decode_apply(x.to(at::kFloat), weight, at::Tensor()));
    CHECK_FALSE(kernels::linear_decode_apply(x, weight, bias.to(at::kFloat)));
    CHECK_FALSE(kernels::linear_decode_apply(x, weight, bias.narrow(0, 0, 32)));
    CHECK_FALSE(kernels::linear_decode_apply(x.to(at::kDouble), weight.to(at::kDouble), at::Tensor()));
    // Under policy Torch, or under CUDA autocast (at::linear would compute in its dtype).
    {
      const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
      CHECK_FALSE(kernels::linear_decode_apply(x, weight, bias));
    }
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    const bool under_autocast = kernels::linear_decode_apply(x, weight, bias);
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    CHECK_FALSE(under_autocast);
    // Refused operands still get at::linear's answer through model::linear.
    const at::Tensor five = at::randn({5, 256}, bf16);
    CHECK(at::equal(model::linear(five, weight, bias), at::linear(five, weight, bias)));
  }
  {
    const at::AutoGradMode grad_mode(true);
    const at::Tensor x_grad = x.detach().clone().requires_grad_(true);
    const at::Tensor w_grad = weight.detach().clone().requires_grad_(true);
    CHECK_FALSE(kernels::linear_decode_apply(x_grad, weight, bias));
    CHECK_FALSE(kernels::linear_decode_apply(x, w_grad, bias));
    CHECK_FALSE(kernels::linear_decode_apply(x, weight, bias.detach().clone().requires_grad_(true)));
    CHECK(kernels::linear_decode_apply(x, weight, bias));  // nothing requires grad
    // at::linear runs and records the graph.
    const at::Tensor y = model::linear(x, w_grad, bias);
    CHECK(y.requires_grad());
    CHECK(y.grad_fn() != nullptr);
  }
}

#ifdef PRIME_WITH_CUDA
TEST_CASE("linear_decode kernel: a CUDA graph replays it as the eager call", "[kernels][gpu][linear]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  at::manual_seed(37);
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor x = at::randn({3, 1, 4096}, options);
  const at::Tensor weight = at::randn({4100, 4096}, options) * 0.02, bias = at::randn({4100}, options);
  REQUIRE(kernels::linear_decode_apply(x, weight, bias));
  const at::Tensor eager = model::linear(x, weight, bias);
  at::cuda::CUDAGraph graph;
  at::Tensor graphed;
  test::capture(graph, [&] { graphed = model::linear(x, weight, bias); });
  // A new x in place, as a decode step's input buffer: the replay reads it.
  x.mul_(0.5);
  graph.replay();
  CHECK(at::equal(graphed, model::linear(x, weight, bias)));
  CHECK_FALSE(at::equal(graphed, eager));
}
#endif

// ---------------------------------------------------------------------------------------------
// The grouped projection (model::linear_group: several weights sharing x, one launch) and the
// gated form (model::gated_linear_silu: silu(x gateᵀ) * (x upᵀ), one launch).

namespace {

// Both grids of the launches; each test runs under both and requires the same bits.
constexpr kernels::LinearDecodeGrid kGrids[] = {kernels::LinearDecodeGrid::OneWave,
                                                kernels::LinearDecodeGrid::PerUnit};

const char* grid_name(kernels::LinearDecodeGrid grid) {
  return grid == kernels::LinearDecodeGrid::OneWave ? "one wave" : "per unit";
}

// silu(x gateᵀ) * (x upᵀ) in float64 on the CPU, and per output the scale its rounding errors
// grow with: (|g| + spread_g) (|u| + spread_u), where each projection's inputs are rounded once
// to the dtype (bf16: 2^-9 of |g|) and the spreads bound the fp32 sums' errors.
Reference reference_gated(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up) {
  const Reference g = reference_linear(x, gate, at::Tensor()), u = reference_linear(x, up, at::Tensor());
  const at::Tensor value = g.value * at::sigmoid(g.value) * u.value;
  return {value, (g.value.abs() + g.spread) * (u.value.abs() + u.spread)};
}

// Against float64: the gated form rounds three times before its output's rounding (each
// projection, silu), and silu' ≤ 1.1: about four roundings of the scale.
double gated_reference_bound(at::ScalarType type) {
  return type == at::kBFloat16 ? 1e-2 : type == at::kHalf ? 3e-3 : 1e-5;
}

std::string describe_group(at::ScalarType type, int64_t rows, int64_t K, const std::vector<int64_t>& Ns,
                           bool bias) {
  std::ostringstream text;
  text << c10::toString(type) << " rows " << rows << " K " << K << " N";
  for (const int64_t N : Ns) text << " " << N;
  if (bias) text << " bias";
  return text.str();
}

}  // namespace

TEST_CASE("linear_decode grouped and gated forms: on the CPU they are at::linear and the torch SwiGLU exactly",
          "[kernels][linear]") {
  at::manual_seed(41);
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16, at::kDouble}) {
    INFO(c10::toString(type));
    const at::Tensor x = at::randn({1, 3, 16}).to(type);
    const at::Tensor q = at::randn({12, 16}).to(type), k = at::randn({4, 16}).to(type), v = at::randn({4, 16}).to(type);
    const at::Tensor q_bias = at::randn({12}).to(type), v_bias = at::randn({4}).to(type);
    const std::vector<at::Tensor> plain = model::linear_group(x, {q, k, v});
    REQUIRE(plain.size() == 3);
    CHECK(at::equal(plain[0], at::linear(x, q)));
    CHECK(at::equal(plain[1], at::linear(x, k)));
    CHECK(at::equal(plain[2], at::linear(x, v)));
    const std::vector<at::Tensor> biased = model::linear_group(x, {q, k, v}, {q_bias, at::Tensor(), v_bias});
    REQUIRE(biased.size() == 3);
    CHECK(at::equal(biased[0], at::linear(x, q, q_bias)));
    CHECK(at::equal(biased[1], at::linear(x, k)));
    CHECK(at::equal(biased[2], at::linear(x, v, v_bias)));
    // A single row (the decode shape) and five weights (more than one launch takes) alike.
    const at::Tensor one = at::randn({1, 1, 16}).to(type);
    const std::vector<at::Tensor> five_weights = {q, k, v, k, q};
    const std::vector<at::Tensor> five = model::linear_group(one, five_weights);
    REQUIRE(five.size() == 5);
    for (size_t i = 0; i < five.size(); ++i) CHECK(at::equal(five[i], at::linear(one, five_weights[i])));
    const at::Tensor gate = at::randn({24, 16}).to(type), up = at::randn({24, 16}).to(type);
    for (const at::Tensor& input : {x, one})
      CHECK(at::equal(model::gated_linear_silu(input, gate, up), at::silu(at::linear(input, gate)) * at::linear(input, up)));
  }
  // Under autograd on the CPU: the torch form, recording the graph.
  const at::Tensor x = at::randn({1, 1, 16}), gate = at::randn({8, 16}).requires_grad_(true);
  const at::Tensor up = at::randn({8, 16});
  const at::Tensor y = model::gated_linear_silu(x, gate, up);
  CHECK(y.requires_grad());
  y.sum().backward();
  CHECK(gate.grad().defined());
}

TEST_CASE("linear_decode grouped: every output equals float64, at::linear and the single-weight kernel, 1 to 4 rows, both grids",
          "[kernels][gpu][linear]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  at::NoGradGuard no_grad;
  at::manual_seed(43);
  const at::Device cuda(at::kCUDA);
  // Row counts of the weights: odd and tiny ones (one row per warp), q/k/v-like ones, odd ones of
  // two rows per warp (on an H200 more than 2112 rows in all), four weights in one launch.
  const std::vector<std::vector<int64_t>> groups = {
      {7, 1, 13}, {1024, 256, 256}, {300, 301}, {4101, 1023, 1025}, {5, 600, 2111, 9}, {4096, 1024, 1024}};
  for (const at::ScalarType type : {at::kBFloat16, at::kFloat, at::kHalf}) {
    for (const int64_t K : {8, 264, 1024}) {
      for (const std::vector<int64_t>& Ns : groups) {
        if (type == at::kHalf && Ns.size() != 3) continue;  // fp16: the bf16 path with another unpacking
        const auto options = at::TensorOptions().device(cuda).dtype(type);
        std::vector<at::Tensor> weights, biases, no_biases(Ns.size());
        for (size_t i = 0; i < Ns.size(); ++i) {
          weights.push_back((at::randn({Ns[i], K}, cuda) / std::sqrt(static_cast<double>(K))).to(type));
          // Every other weight with a bias: a group mixes both.
          biases.push_back(i % 2 == 0 ? (0.1 * at::randn({Ns[i]}, cuda)).to(type) : at::Tensor());
        }
        const at::Tensor x_all = at::randn({4, K}, options);
        std::vector<Reference> want;
        for (const at::Tensor& weight : weights) want.push_back(reference_linear(x_all, weight, at::Tensor()));
        for (int64_t rows = 1; rows <= 4; ++rows) {
          const at::Tensor x = x_all.narrow(0, 0, rows).reshape({rows, 1, K});
          for (const bool with_bias : {false, true}) {
            const std::vector<at::Tensor>& bias = with_bias ? biases : no_biases;
            const std::string what = describe_group(type, rows, K, Ns, with_bias);
            INFO(what);
            std::vector<at::Tensor> torch_form;
            {
              const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
              torch_form = model::linear_group(x, weights, bias);
            }
            std::vector<at::Tensor> first_grid;
            for (const kernels::LinearDecodeGrid grid : kGrids) {
              INFO(grid_name(grid));
              const kernels::ScopedLinearDecodeGrid scoped(grid);
              const std::vector<at::Tensor> got = model::linear_group(x, weights, bias);
              REQUIRE(got.size() == Ns.size());
              for (size_t i = 0; i < Ns.size(); ++i) {
                INFO("weight " << i);
                REQUIRE(got[i].sizes() == torch_form[i].sizes());
                REQUIRE(got[i].is_contiguous());
                REQUIRE(got[i].scalar_type() == type);
                const Reference reference = first_rows(want[i], rows, bias[i]);
                const double ours = row_relative_error(got[i], reference);
                const double ours_norm = test::norm_relative_error(got[i], reference.value);
                const double theirs_norm = test::norm_relative_error(torch_form[i], reference.value);
                CHECK(ours <= reference_bound(type));
                if (type != at::kFloat) CHECK(ours_norm <= 2 * theirs_norm + 1e-4);
                // The grouped launch computes each row as the single-weight launch does.
                CHECK(at::equal(got[i], model::linear(x, weights[i], bias[i])));
                if (grid == kGrids[0] && i == 0 && rows == 1)
                  std::cout << "[kernels][linear] grouped " << what << ": vs float64 " << ours << ", norm "
                            << ours_norm << " (at::linear " << theirs_norm << ")\n";
              }
              if (first_grid.empty()) first_grid = got;
              else
                for (size_t i = 0; i < Ns.size(); ++i) CHECK(at::equal(got[i], first_grid[i]));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("linear_decode gated: silu of x gate^T times x up^T equals float64 and the torch form, 1 to 4 rows, both grids",
          "[kernels][gpu][linear]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  at::NoGradGuard no_grad;
  at::manual_seed(47);
  const at::Device cuda(at::kCUDA);
  for (const at::ScalarType type : {at::kBFloat16, at::kFloat, at::kHalf}) {
    for (const int64_t K : {8, 264, 4096}) {
      for (const int64_t N : {1, 7, 1000, 12289}) {
        if ((type == at::kHalf && K == 4096) || (N == 12289 && K != 264)) continue;
        const auto options = at::TensorOptions().device(cuda).dtype(type);
        const at::Tensor gate = (at::randn({N, K}, cuda) / std::sqrt(static_cast<double>(K))).to(type);
        const at::Tensor up = (at::randn({N, K}, cuda) / std::sqrt(static_cast<double>(K))).to(type);
        const at::Tensor x_all = at::randn({4, K}, options);
        const Reference want = reference_gated(x_all, gate, up);
        for (int64_t rows = 1; rows <= 4; ++rows) {
          const at::Tensor x = x_all.narrow(0, 0, rows).reshape({rows, 1, K});
          const std::string what = describe(type, rows, K, N, false);
          INFO(what);
          const Reference reference = first_rows(want, rows, at::Tensor());
          at::Tensor torch_form;
          {
            const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
            torch_form = model::gated_linear_silu(x, gate, up);
          }
          // The torch ops on the kernel's own projections: the same roundings of the same sums.
          const at::Tensor on_projections = at::silu(model::linear(x, gate)) * model::linear(x, up);
          at::Tensor first_grid;
          for (const kernels::LinearDecodeGrid grid : kGrids) {
            INFO(grid_name(grid));
            const kernels::ScopedLinearDecodeGrid scoped(grid);
            const at::Tensor got = model::gated_linear_silu(x, gate, up);
            REQUIRE(got.sizes() == torch_form.sizes());
            REQUIRE(got.is_contiguous());
            REQUIRE(got.scalar_type() == type);
            const double ours = row_relative_error(got, reference), theirs = row_relative_error(torch_form, reference);
            const double ours_norm = test::norm_relative_error(got, reference.value);
            const double theirs_norm = test::norm_relative_error(torch_form, reference.value);
            CHECK(ours <= gated_reference_bound(type));
            if (type != at::kFloat) CHECK(ours_norm <= 2 * theirs_norm + 1e-4);
            // Against the torch ops on the same projections: silu's exp may differ by an ulp of
            // fp32, which can move one rounding of the dtype.
            const double same_sums = row_relative_error(got, {on_projections.to(at::kCPU, at::kDouble), reference.spread});
            CHECK(same_sums <= (type == at::kFloat ? 1e-6 : type == at::kHalf ? 2e-3 : 8e-3));
            if (grid == kGrids[0])
              std::cout << "[kernels][linear] gated " << what << ": vs float64 " << ours << " (torch form " << theirs
                        << "), norm " << ours_norm << " (torch form " << theirs_norm << "), vs the torch ops on "
                        << "its projections " << same_sums << (at::equal(got, on_projections) ? " (bitwise)" : "")
                        << "\n";
            if (!first_grid.defined()) first_grid = got;
            else CHECK(at::equal(got, first_grid));
          }
        }
      }
    }
  }
}

TEST_CASE("linear_decode grouped and gated: refused operands run the torch forms exactly",
          "[kernels][gpu][linear]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor w0 = at::randn({64, 256}, bf16), w1 = at::randn({32, 256}, bf16);
  const at::Tensor b0 = at::randn({64}, bf16);
  {
    at::NoGradGuard no_grad;
    // Five rows (prefill): at::linear per weight, the torch SwiGLU.
    const at::Tensor five = at::randn({5, 256}, bf16);
    const std::vector<at::Tensor> outs = model::linear_group(five, {w0, w1}, {b0, at::Tensor()});
    CHECK(at::equal(outs[0], at::linear(five, w0, b0)));
    CHECK(at::equal(outs[1], at::linear(five, w1)));
    CHECK(at::equal(model::gated_linear_silu(five, w0, w0.flip(0).contiguous()),
                    at::silu(at::linear(five, w0)) * at::linear(five, w0.flip(0).contiguous())));
    // One weight the kernel does not serve (strided): each projection as model::linear decides.
    const at::Tensor x = at::randn({1, 1, 256}, bf16);
    const at::Tensor strided = at::randn({256, 32}, bf16).t();
    REQUIRE_FALSE(kernels::linear_decode_apply(x, strided, at::Tensor()));
    const std::vector<at::Tensor> mixed = model::linear_group(x, {w0, strided});
    CHECK(at::equal(mixed[0], model::linear(x, w0)));
    CHECK(at::equal(mixed[1], at::linear(x, strided)));
    CHECK(at::equal(model::gated_linear_silu(x, strided, strided),
                    at::silu(at::linear(x, strided)) * at::linear(x, strided)));
    // Five weights: more than one launch takes; each is the single-weight kernel's.
    const std::vector<at::Tensor> many = model::linear_group(x, {w0, w1, w0, w1, w0});
    REQUIRE(many.size() == 5);
    CHECK(at::equal(many[4], model::linear(x, w0)));
    // Policy Torch: exactly the torch forms.
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    CHECK(at::equal(model::linear_group(x, {w0, w1}, {b0, at::Tensor()})[0], at::linear(x, w0, b0)));
    CHECK(at::equal(model::gated_linear_silu(x, w1, w1), at::silu(at::linear(x, w1)) * at::linear(x, w1)));
  }
  {
    // Under autograd with a weight requiring grad: the torch forms, recording the graph.
    const at::AutoGradMode grad_mode(true);
    const at::Tensor x = at::randn({1, 1, 256}, bf16);
    const at::Tensor w_grad = w1.detach().clone().requires_grad_(true);
    const at::Tensor gated = model::gated_linear_silu(x, w_grad, w1);
    CHECK(gated.grad_fn() != nullptr);
    const std::vector<at::Tensor> outs = model::linear_group(x, {w0, w_grad});
    CHECK(outs[1].grad_fn() != nullptr);
  }
}

#ifdef PRIME_WITH_CUDA
TEST_CASE("linear_decode grouped and gated: a CUDA graph replays them as the eager calls, both grids",
          "[kernels][gpu][linear]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  at::manual_seed(53);
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor q = at::randn({4096, 1024}, options) * 0.03, k = at::randn({1024, 1024}, options) * 0.03;
  const at::Tensor v = at::randn({1025, 1024}, options) * 0.03, q_bias = at::randn({4096}, options);
  const at::Tensor gate = at::randn({3001, 1024}, options) * 0.03, up = at::randn({3001, 1024}, options) * 0.03;
  for (const kernels::LinearDecodeGrid grid : kGrids) {
    INFO(grid_name(grid));
    const kernels::ScopedLinearDecodeGrid scoped(grid);
    const at::Tensor x = at::randn({1, 1, 1024}, options);
    const std::vector<at::Tensor> eager = model::linear_group(x, {q, k, v}, {q_bias, at::Tensor(), at::Tensor()});
    const at::Tensor eager_gated = model::gated_linear_silu(x, gate, up);
    at::cuda::CUDAGraph graph;
    std::vector<at::Tensor> graphed;
    at::Tensor graphed_gated;
    test::capture(graph, [&] {
      graphed = model::linear_group(x, {q, k, v}, {q_bias, at::Tensor(), at::Tensor()});
      graphed_gated = model::gated_linear_silu(x, gate, up);
    });
    // A new x in place, as a decode step's input buffer: the replay reads it.
    x.mul_(0.5);
    graph.replay();
    const std::vector<at::Tensor> now = model::linear_group(x, {q, k, v}, {q_bias, at::Tensor(), at::Tensor()});
    for (size_t i = 0; i < 3; ++i) {
      CHECK(at::equal(graphed[i], now[i]));
      CHECK_FALSE(at::equal(graphed[i], eager[i]));
    }
    CHECK(at::equal(graphed_gated, model::gated_linear_silu(x, gate, up)));
    CHECK_FALSE(at::equal(graphed_gated, eager_gated));
  }
}
#endif
