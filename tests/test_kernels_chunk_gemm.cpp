// kernels/chunk_gemm: batched fp32 products on the 3xTF32 tensor cores, against float64 products
// on the CPU. Every element is held to a relative bound on its own scale, |got - want| <= 1e-5 *
// (|a| |b|)_ij (3xTF32 keeps about 2^-21 per term; plain TF32 would miss it by ~50x), for both
// orientations of each operand (transposed views are read in place), partial tiles, a depth not a
// multiple of the 32-deep stage, row strides wider than the rows, a broadcast operand, beta 0
// (out poisoned with NaN: unread, and any element left unwritten fails), 1 and -0.5, with and
// without a scale on the product's columns.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/chunk_gemm/chunk_gemm.h"
#include "kernels/common/policy.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

// [batch, rows, cols] with its rows contiguous (row_major) or its columns, and with row strides
// `extra` floats wider than needed (a narrowed view of a wider tensor).
at::Tensor operand(int64_t batch, int64_t rows, int64_t cols, bool row_major, int64_t extra,
                   const at::TensorOptions& options) {
  if (row_major) return at::randn({batch, rows, cols + extra}, options).narrow(2, 0, cols);
  return at::randn({batch, cols, rows + extra}, options).narrow(2, 0, rows).transpose(1, 2);
}

// The worst |got - want| / (|a| |b|) over the elements (float64, CPU); out0 is out before the call,
// column_scale the product's column factors (optional).
double worst_error(const at::Tensor& got, const at::Tensor& a, const at::Tensor& b, const at::Tensor& out0,
                   double alpha, double beta, const at::Tensor& column_scale = at::Tensor()) {
  const at::Tensor a64 = a.to(at::kCPU, at::kDouble), b64 = b.to(at::kCPU, at::kDouble);
  at::Tensor want = alpha * at::bmm(a64, b64);
  at::Tensor scale = std::abs(alpha) * at::bmm(a64.abs(), b64.abs());
  if (column_scale.defined()) {
    const at::Tensor s64 = column_scale.to(at::kCPU, at::kDouble).unsqueeze(1);
    want = want * s64;
    scale = scale * s64.abs();
  }
  if (beta != 0.0) {
    const at::Tensor old = out0.to(at::kCPU, at::kDouble);
    want = want + beta * old;
    scale = scale + std::abs(beta) * old.abs();
  }
  return ((got.to(at::kCPU, at::kDouble) - want).abs() / scale.clamp_min(1e-30)).max().item<double>();
}

}  // namespace

TEST_CASE("chunk gemm: CPU operands take baddbmm and give its result", "[kernels][chunk_gemm]") {
  at::manual_seed(3);
  const at::Tensor a = at::randn({3, 16, 8}, at::kDouble), b = at::randn({3, 8, 16}, at::kDouble);
  at::Tensor out = at::randn({3, 16, 16}, at::kDouble);
  const at::Tensor want = 0.5 * out + 2.0 * at::bmm(a, b);
  CHECK_FALSE(kernels::chunk_gemm_apply(out, a, b));
  kernels::chunk_gemm(out, a, b, 2.0, 0.5);
  CHECK(test::norm_relative_error(out, want) < 1e-14);
  CHECK(test::norm_relative_error(kernels::chunk_matmul(a, b), at::bmm(a, b)) < 1e-14);
  const at::Tensor scale = at::randn({3, 16}, at::kDouble);
  const at::Tensor scaled_want = 0.5 * out + 2.0 * at::bmm(a, b) * scale.unsqueeze(1);
  kernels::chunk_gemm(out, a, b, 2.0, 0.5, scale);
  CHECK(test::norm_relative_error(out, scaled_want) < 1e-14);
}

// Precision::Bf16 off CUDA: the products of the operands rounded to bf16 (what the kernel multiplies).
TEST_CASE("chunk gemm: bf16 products on the CPU multiply the operands rounded to bf16", "[kernels][chunk_gemm]") {
  at::manual_seed(5);
  const at::Tensor a = at::randn({3, 16, 32}, at::kDouble), b = at::randn({3, 32, 16}, at::kDouble);
  const auto rounded = [](const at::Tensor& x) { return x.to(at::kBFloat16).to(at::kDouble); };
  // bf16 operands: an fp32 result, their values' product, in either arithmetic.
  const at::Tensor a16 = a.to(at::kBFloat16), b16 = b.to(at::kBFloat16);
  for (const kernels::GemmPrecision precision : {kernels::GemmPrecision::Bf16, kernels::GemmPrecision::Fp32}) {
    const at::Tensor got = kernels::chunk_matmul(a16, b16.to(at::kFloat), 1.0, at::Tensor(), precision);
    CHECK(got.scalar_type() == at::kFloat);
    CHECK(test::norm_relative_error(got.to(at::kDouble), at::bmm(rounded(a), rounded(b))) < 1e-6);
  }
  at::Tensor out = at::randn({3, 16, 16}, at::kDouble);
  const at::Tensor out0 = out.clone();
  kernels::chunk_gemm(out, a, b, 2.0, 0.5, at::Tensor(), kernels::GemmPrecision::Bf16);
  CHECK(test::norm_relative_error(out, 0.5 * out0 + 2.0 * at::bmm(rounded(a), rounded(b))) < 1e-14);
  CHECK(test::norm_relative_error(out, 0.5 * out0 + 2.0 * at::bmm(a, b)) > 1e-4);  // the rounding shows
  const at::Tensor scale = at::randn({3, 16}, at::kDouble);
  CHECK(test::norm_relative_error(kernels::chunk_matmul(a, b, -1.0, scale, kernels::GemmPrecision::Bf16),
                                  -at::bmm(rounded(a), rounded(b)) * scale.unsqueeze(1)) < 1e-14);
}

TEST_CASE("chunk gemm: fp32 products on CUDA within 1e-5 of float64 per element", "[kernels][gpu][chunk_gemm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  at::manual_seed(11);
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  // (batch, m, k, n): the backward's chunk shapes, partial tiles (48, 80), a depth that ends
  // mid-stage (40, 8) and one of several stages (256).
  const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>> shapes = {
      {37, 64, 128, 128}, {5, 128, 64, 128}, {3, 48, 40, 80}, {2, 16, 8, 16}, {2, 256, 256, 64}, {4, 64, 64, 64}};
  const std::vector<std::pair<double, double>> scalings = {{1.0, 0.0}, {-1.5, 1.0}, {0.75, -0.5}};
  double worst = 0.0;
  for (const auto& [batch, m, k, n] : shapes)
    for (const bool a_rows : {true, false})
      for (const bool b_rows : {true, false})
        for (const auto& [alpha, beta] : scalings) {
          const int64_t extra = (m + k + n) % 3 == 0 ? 4 : 0;
          const at::Tensor a = operand(batch, m, k, a_rows, extra, options);
          const at::Tensor b = operand(batch, k, n, b_rows, 8 - extra, options);
          at::Tensor out = beta == 0.0 ? at::full({batch, m, n}, NAN, options) : at::randn({batch, m, n}, options);
          const at::Tensor out0 = out.clone();
          INFO("(" << batch << "," << m << "," << k << "," << n << ") a rows " << a_rows << " b rows " << b_rows
                   << " alpha " << alpha << " beta " << beta);
          REQUIRE(kernels::chunk_gemm_apply(out, a, b));
          kernels::chunk_gemm(out, a, b, alpha, beta);
          const double error = worst_error(out, a, b, out0, alpha, beta);
          CHECK(error < 1e-5);
          worst = std::max(worst, error);
          // The product's columns scaled (a column of a wider tensor: batch stride n + 4).
          const at::Tensor column_scale = at::randn({batch, n + 4}, options).narrow(1, 2, n);
          at::Tensor scaled = out0.clone();
          kernels::chunk_gemm(scaled, a, b, alpha, beta, column_scale);
          const double scaled_error = worst_error(scaled, a, b, out0, alpha, beta, column_scale);
          CHECK(scaled_error < 1e-5);
          worst = std::max(worst, scaled_error);
        }
  WARN("chunk_gemm: worst per-element error " << worst << " of |a| |b|");
}

// Precision::Bf16 on CUDA: each operand element rounded to bf16, one bf16 MMA per 16-deep step, fp32
// accumulation. Against the float64 product of the rounded operands every element within 1e-5 of its
// scale (|a| |b| of the rounded operands: only the fp32 accumulation is left), and away from the
// unrounded product (the rounding took place), for both orientations, partial tiles, depths that end
// mid-step (8, 40) and several stages (256), beta 0 / 1 / -0.5, with and without a column scale.
TEST_CASE("chunk gemm: bf16 products on CUDA multiply the operands rounded to bf16", "[kernels][gpu][chunk_gemm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  at::manual_seed(13);
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const auto rounded = [](const at::Tensor& x) { return x.to(at::kBFloat16).to(at::kFloat); };
  // Depths 56 and 88: a last stage 24 deep, the second in a stage buffer an earlier stage filled.
  const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>> shapes = {
      {37, 64, 128, 128}, {5, 128, 64, 128}, {3, 48, 40, 80}, {2, 16, 8, 16}, {2, 256, 256, 64},
      {3, 64, 56, 64}, {3, 32, 88, 48}};
  const std::vector<std::pair<double, double>> scalings = {{1.0, 0.0}, {-1.5, 1.0}, {0.75, -0.5}};
  double worst = 0.0;
  for (const auto& [batch, m, k, n] : shapes)
    for (const bool a_rows : {true, false})
      for (const bool b_rows : {true, false})
        for (const auto& [alpha, beta] : scalings) {
          const at::Tensor a = operand(batch, m, k, a_rows, 4, options);
          const at::Tensor b = operand(batch, k, n, b_rows, 0, options);
          at::Tensor out = beta == 0.0 ? at::full({batch, m, n}, NAN, options) : at::randn({batch, m, n}, options);
          const at::Tensor out0 = out.clone();
          INFO("(" << batch << "," << m << "," << k << "," << n << ") a rows " << a_rows << " b rows " << b_rows
                   << " alpha " << alpha << " beta " << beta);
          REQUIRE(kernels::chunk_gemm_apply(out, a, b));
          const at::Tensor column_scale = at::randn({batch, n}, options);
          for (const bool scaled : {false, true}) {
            at::Tensor got = out0.clone();
            kernels::chunk_gemm(got, a, b, alpha, beta, scaled ? column_scale : at::Tensor(),
                                kernels::GemmPrecision::Bf16);
            const double error = worst_error(got, rounded(a), rounded(b), out0, alpha, beta,
                                             scaled ? column_scale : at::Tensor());
            CHECK(error < 1e-5);
            worst = std::max(worst, error);
            if (!scaled && beta == 0.0)
              CHECK(worst_error(got, a, b, out0, alpha, beta) > 1e-4);  // the operands were rounded
          }
        }
  WARN("chunk_gemm bf16: worst per-element error " << worst << " of |a| |b| (rounded operands)");
}

// bf16 operands (read as they are by the bf16 products, in both orientations, either or both of the two):
// the same result bit for bit as their fp32 copies give (the same values, the same MMAs), an fp32 output;
// with fp32 products, the fp32 copies' result too.
TEST_CASE("chunk gemm: bf16 operands give their fp32 copies' products bit for bit", "[kernels][gpu][chunk_gemm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  at::manual_seed(17);
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  using kernels::GemmPrecision;
  for (const auto& [batch, m, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {37, 64, 128, 128}, {3, 48, 40, 80}, {3, 64, 56, 64}, {2, 16, 8, 16}})
    for (const bool a_rows : {true, false})
      for (const bool b_rows : {true, false}) {
        INFO("(" << batch << "," << m << "," << k << "," << n << ") a rows " << a_rows << " b rows " << b_rows);
        const at::Tensor a16 = operand(batch, m, k, a_rows, 8, options), b16 = operand(batch, k, n, b_rows, 0, options);
        const at::Tensor a32 = a16.to(at::kFloat), b32 = b16.to(at::kFloat);
        const at::Tensor scale = at::randn({batch, n}, options.dtype(at::kFloat));
        const at::Tensor want = kernels::chunk_matmul(a32, b32, -0.5, scale, GemmPrecision::Bf16);
        for (const auto& [a, b] : {std::pair{a16, b16}, std::pair{a16, b32}, std::pair{a32, b16}}) {
          at::Tensor out = at::full({batch, m, n}, NAN, options.dtype(at::kFloat));
          CHECK(kernels::chunk_gemm_apply(out, a, b, GemmPrecision::Bf16));
          CHECK_FALSE(kernels::chunk_gemm_apply(out, a, b));  // fp32 products take fp32 operands
          const at::Tensor got = kernels::chunk_matmul(a, b, -0.5, scale, GemmPrecision::Bf16);
          CHECK(got.scalar_type() == at::kFloat);
          CHECK(at::equal(got, want));
        }
        CHECK(at::equal(kernels::chunk_matmul(a16, b32, 2.0), kernels::chunk_matmul(a32, b32, 2.0)));
      }
}

TEST_CASE("chunk gemm: a broadcast operand and the shapes the kernel declines", "[kernels][gpu][chunk_gemm]") {
  if (!test::gpu_available_or_fail()) return;
  at::NoGradGuard no_grad;
  at::manual_seed(12);
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  // b broadcast over the batch (batch stride 0).
  const at::Tensor a = at::randn({6, 64, 32}, options), b = at::randn({1, 32, 64}, options).expand({6, 32, 64});
  at::Tensor out = at::full({6, 64, 64}, NAN, options);
  REQUIRE(kernels::chunk_gemm_apply(out, a, b));
  kernels::chunk_gemm(out, a, b, 1.0, 0.0);
  CHECK(worst_error(out, a, b, out, 1.0, 0.0) < 1e-5);
  // m not a multiple of 16, a depth not a multiple of 8, a misaligned view, out aliasing a: declined, and
  // the call still gives the product (baddbmm).
  const at::Tensor odd_m = at::randn({2, 20, 16}, options), odd_k = at::randn({2, 16, 12}, options);
  const at::Tensor misaligned = at::randn({2, 16, 17}, options).narrow(2, 1, 16);
  const at::Tensor rhs = at::randn({2, 16, 16}, options), rhs_k = at::randn({2, 12, 16}, options);
  at::Tensor out_m = at::empty({2, 20, 16}, options), out_k = at::empty({2, 16, 16}, options);
  at::Tensor out_misaligned = at::empty({2, 16, 16}, options);
  CHECK_FALSE(kernels::chunk_gemm_apply(out_m, odd_m, rhs));
  CHECK_FALSE(kernels::chunk_gemm_apply(out_k, odd_k, rhs_k));
  CHECK_FALSE(kernels::chunk_gemm_apply(out_misaligned, misaligned, rhs));
  at::Tensor square = at::randn({2, 16, 16}, options);
  CHECK_FALSE(kernels::chunk_gemm_apply(square, square, rhs));
  const test::FullFp32Matmuls fp32;
  kernels::chunk_gemm(out_m, odd_m, rhs, 1.0, 0.0);
  kernels::chunk_gemm(out_k, odd_k, rhs_k, 1.0, 0.0);
  kernels::chunk_gemm(out_misaligned, misaligned, rhs, 1.0, 0.0);
  CHECK(worst_error(out_m, odd_m, rhs, out_m, 1.0, 0.0) < 1e-5);
  CHECK(worst_error(out_k, odd_k, rhs_k, out_k, 1.0, 0.0) < 1e-5);
  CHECK(worst_error(out_misaligned, misaligned, rhs, out_misaligned, 1.0, 0.0) < 1e-5);
  {
    const kernels::ScopedKernelPolicy torch(kernels::Policy::Torch);
    CHECK_FALSE(kernels::chunk_gemm_apply(out, a, b));
  }
}

// A sum of products (chunk_gemm_sum) off CUDA: its terms added in turn, as chunk_gemm's calls add them;
// a bf16 out holds that sum rounded; what it refuses.
TEST_CASE("chunk gemm: a sum of products on the CPU is its terms added in turn", "[kernels][chunk_gemm]") {
  at::manual_seed(21);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor a1 = at::randn({3, 16, 32}, f32), b1 = at::randn({3, 32, 16}, f32);
  const at::Tensor a2 = at::randn({3, 16, 8}, f32), b2 = at::randn({3, 8, 16}, f32);
  const at::Tensor scale = at::randn({3, 16}, f32);
  using kernels::GemmPrecision;
  using kernels::GemmTerm;
  for (const GemmPrecision precision : {GemmPrecision::Fp32, GemmPrecision::Bf16}) {
    const std::vector<GemmTerm> terms{GemmTerm{a1, b1, -0.5, scale}, GemmTerm{a2, b2, 2.0, at::Tensor()}};
    const at::Tensor out0 = at::randn({3, 16, 16}, f32);
    at::Tensor want = out0.clone(), got = out0.clone();
    kernels::chunk_gemm(want, a1, b1, -0.5, 0.25, scale, precision);
    kernels::chunk_gemm(want, a2, b2, 2.0, 1.0, at::Tensor(), precision);
    CHECK_FALSE(kernels::chunk_gemm_sum_apply(got, terms, precision));
    kernels::chunk_gemm_sum(got, terms, 0.25, precision);
    CHECK(at::equal(got, want));
    const at::Tensor fresh = kernels::chunk_matmul_sum(terms, precision);
    at::Tensor from_zero = at::full({3, 16, 16}, NAN, f32);
    kernels::chunk_gemm(from_zero, a1, b1, -0.5, 0.0, scale, precision);
    kernels::chunk_gemm(from_zero, a2, b2, 2.0, 1.0, at::Tensor(), precision);
    CHECK(at::equal(fresh, from_zero));
    if (precision == GemmPrecision::Bf16) {
      const at::Tensor rounded = kernels::chunk_matmul_sum(terms, precision, at::kBFloat16);
      CHECK(rounded.scalar_type() == at::kBFloat16);
      CHECK(at::equal(rounded, from_zero.to(at::kBFloat16)));
    } else {
      CHECK_THROWS_WITH(kernels::chunk_matmul_sum(terms, precision, at::kBFloat16),
                        Catch::Contains("bf16 out takes bf16 products"));
    }
  }
  at::Tensor bf16_out = at::empty({3, 16, 16}, f32.dtype(at::kBFloat16));
  CHECK_THROWS_WITH(kernels::chunk_gemm_sum(bf16_out, {GemmTerm{a1, b1}}, 1.0, GemmPrecision::Bf16),
                    Catch::Contains("beta 0"));
  at::Tensor out = at::empty({3, 16, 16}, f32);
  CHECK_THROWS_WITH(kernels::chunk_gemm_sum(out, {}, 0.0), Catch::Contains("no terms"));
  CHECK_THROWS_WITH(kernels::chunk_gemm_sum(out, {GemmTerm{a1, b2}}, 0.0), Catch::Contains("do not multiply"));
}

// On CUDA: bf16 products' sums of two and three terms (depths 64, 40 and 128: the stages run on from one
// term to the next; partial tiles; column scales on some terms; every orientation; fp32 and bf16 operands)
// in one launch, the same bits as chunk_gemm's calls adding the terms in turn, out poisoned where beta is
// 0; a bf16 out the same sum rounded; sums the kernel does not take in one launch (mixed orientations,
// fp32 products) still the same bits, term by term.
TEST_CASE("chunk gemm: a sum of products on CUDA gives its terms added in turn bit for bit", "[kernels][gpu][chunk_gemm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  at::manual_seed(23);
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  using kernels::GemmPrecision;
  using kernels::GemmTerm;
  const auto in_turn = [](at::Tensor out, const std::vector<GemmTerm>& terms, double beta, GemmPrecision precision) {
    for (size_t i = 0; i < terms.size(); ++i)
      kernels::chunk_gemm(out, terms[i].a, terms[i].b, terms[i].alpha, i == 0 ? beta : 1.0, terms[i].column_scale,
                          precision);
    return out;
  };
  const std::vector<int64_t> depths{64, 40, 128};
  for (const auto& [batch, m, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{9, 64, 128}, {3, 48, 80}})
    for (const bool a_rows : {true, false})
      for (const bool b_rows : {true, false})
        for (const at::ScalarType operands : {at::kFloat, at::kBFloat16})
          for (const size_t count : {2, 3}) {
            INFO("(" << batch << "," << m << "," << n << ") a rows " << a_rows << " b rows " << b_rows << " "
                     << operands << " terms " << count);
            std::vector<GemmTerm> terms;
            for (size_t i = 0; i < count; ++i) {
              const int64_t k = depths[i];
              terms.push_back(GemmTerm{operand(batch, m, k, a_rows, 8, f32.dtype(operands)),
                                       operand(batch, k, n, b_rows, 0, f32.dtype(operands)), i == 1 ? -0.75 : 1.0,
                                       i == 0 ? at::Tensor() : at::randn({batch, n}, f32)});
            }
            for (const double beta : {0.0, -0.5}) {
              at::Tensor out = beta == 0.0 ? at::full({batch, m, n}, NAN, f32) : at::randn({batch, m, n}, f32);
              const at::Tensor want = in_turn(out.clone(), terms, beta, GemmPrecision::Bf16);
              REQUIRE(kernels::chunk_gemm_sum_apply(out, terms, GemmPrecision::Bf16));
              kernels::chunk_gemm_sum(out, terms, beta, GemmPrecision::Bf16);
              CHECK(at::equal(out, want));
            }
            const at::Tensor fp32_sum = kernels::chunk_matmul_sum(terms, GemmPrecision::Bf16);
            at::Tensor rounded = at::full({batch, m, n}, NAN, f32.dtype(at::kBFloat16));
            REQUIRE(kernels::chunk_gemm_sum_apply(rounded, terms, GemmPrecision::Bf16));
            kernels::chunk_gemm_sum(rounded, terms, 0.0, GemmPrecision::Bf16);
            CHECK(at::equal(rounded, fp32_sum.to(at::kBFloat16)));
            if (operands == at::kFloat) {  // fp32 products: term by term
              at::Tensor out = at::randn({batch, m, n}, f32);
              const at::Tensor want = in_turn(out.clone(), terms, 0.5, GemmPrecision::Fp32);
              CHECK_FALSE(kernels::chunk_gemm_sum_apply(out, terms, GemmPrecision::Fp32));
              kernels::chunk_gemm_sum(out, terms, 0.5, GemmPrecision::Fp32);
              CHECK(at::equal(out, want));
            }
          }
  // Mixed orientations: term by term, the same bits.
  const at::Tensor b_rows = operand(4, 64, 64, true, 0, f32), b_columns = operand(4, 64, 64, false, 0, f32);
  const at::Tensor a = operand(4, 64, 64, true, 0, f32);
  const std::vector<GemmTerm> mixed{GemmTerm{a, b_rows}, GemmTerm{a, b_columns, 2.0}};
  at::Tensor out = at::full({4, 64, 64}, NAN, f32);
  CHECK_FALSE(kernels::chunk_gemm_sum_apply(out, mixed, GemmPrecision::Bf16));
  kernels::chunk_gemm_sum(out, mixed, 0.0, GemmPrecision::Bf16);
  CHECK(at::equal(out, in_turn(at::full({4, 64, 64}, NAN, f32), mixed, 0.0, GemmPrecision::Bf16)));
}

namespace {

// A time-major [B,T,H,D] tensor's per-chunk view [B,H,T/C,C,D] (chunk_gemm's batch of three dims, read in
// place) and the same values as a contiguous [B*H*T/C, C, D] copy.
std::pair<at::Tensor, at::Tensor> per_chunk_view(int64_t B, int64_t T, int64_t H, int64_t D, int64_t C,
                                                 const at::TensorOptions& options) {
  const at::Tensor x = at::randn({B, T, H, D}, options);
  const at::Tensor view = x.unflatten(1, {T / C, C}).permute({0, 3, 1, 2, 4});
  return {view, view.contiguous().view({-1, C, D})};
}

}  // namespace

// Batches of two and three dims off CUDA: the products of the batch flattened, whatever the strides; an out
// whose batch does not flatten to one dim in place is written back; mismatched batches are refused.
TEST_CASE("chunk gemm: batches of several dims on the CPU are their flattened products", "[kernels][chunk_gemm]") {
  at::manual_seed(29);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  using kernels::GemmPrecision;
  using kernels::GemmTerm;
  const auto [a, a_flat] = per_chunk_view(2, 48, 3, 8, 16, f64);  // [2,3,3,16,8]
  const at::Tensor b = at::randn({2, 3, 3, 8, 16}, f64), scale = at::randn({2, 3, 3, 16}, f64);
  const at::Tensor b_flat = b.reshape({-1, 8, 16}), scale_flat = scale.reshape({-1, 16});
  const at::Tensor want = at::bmm(a_flat, b_flat) * scale_flat.unsqueeze(1);
  const at::Tensor got = kernels::chunk_matmul(a, b, 1.0, scale);
  CHECK(got.sizes() == at::IntArrayRef({2, 3, 3, 16, 16}));
  CHECK(test::norm_relative_error(got.reshape({-1, 16, 16}), want) < 1e-14);
  // Two batch dims, out a permuted view (its batch does not flatten in place), beta 1.
  const at::Tensor a2 = a_flat.view({6, 3, 16, 8}), b2 = b_flat.view({6, 3, 8, 16});
  const at::Tensor out_storage = at::randn({3, 6, 16, 16}, f64);
  at::Tensor out = out_storage.permute({1, 0, 2, 3});
  const at::Tensor out0 = out.clone();
  kernels::chunk_gemm(out, a2, b2, -2.0, 1.0);
  CHECK(test::norm_relative_error(out, out0 - 2.0 * at::matmul(a2, b2)) < 1e-14);
  CHECK(out.data_ptr() == out_storage.data_ptr());
  // Bf16 products of a three-dim batch: the flattened operands' rounded products.
  const at::Tensor rounded = kernels::chunk_matmul_sum({GemmTerm{a, b, 0.5, scale}}, GemmPrecision::Bf16);
  const at::Tensor rounded_want = kernels::chunk_matmul(a_flat, b_flat, 0.5, scale_flat, GemmPrecision::Bf16);
  CHECK(at::equal(rounded.reshape({-1, 16, 16}), rounded_want));
  CHECK_THROWS_WITH(kernels::chunk_matmul(a, b.narrow(1, 0, 2)), Catch::Contains("do not multiply"));
  CHECK_THROWS_WITH(kernels::chunk_matmul(a2.unsqueeze(0).unsqueeze(0), b2.unsqueeze(0).unsqueeze(0)),
                    Catch::Contains("do not multiply"));
}

// On CUDA: a batch of three dims whose operand is a time-major tensor's per-chunk view (strided batch dims,
// bf16 and fp32) is served in place, and gives the bits of the same product on the contiguous copies with
// one batch dim, for fp32 and bf16 products, a sum of two terms with column scales, and an out that is
// itself a permuted view.
TEST_CASE("chunk gemm: a batch of three dims reads per-chunk views in place bit for bit",
          "[kernels][gpu][chunk_gemm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  at::manual_seed(31);
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  using kernels::GemmPrecision;
  using kernels::GemmTerm;
  const int64_t B = 2, T = 192, H = 3, D = 128, C = 64, N = T / C;
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    INFO("operands " << type);
    const auto [q, q_flat] = per_chunk_view(B, T, H, D, C, f32.dtype(type));
    const auto [k, k_flat] = per_chunk_view(B, T, H, D, C, f32.dtype(type));
    const at::Tensor state = at::randn({B, H, N, D, D}, f32), state_flat = state.view({-1, D, D});
    const at::Tensor scale = at::randn({B, H, N, C}, f32), scale_flat = scale.view({-1, C});
    for (const GemmPrecision precision : {GemmPrecision::Fp32, GemmPrecision::Bf16}) {
      if (type == at::kBFloat16 && precision == GemmPrecision::Fp32) continue;  // fp32 products take fp32
      INFO("bf16 products " << (precision == GemmPrecision::Bf16));
      at::Tensor out = at::full({B, H, N, C, D}, NAN, f32);
      REQUIRE(kernels::chunk_gemm_apply(out, q, state, precision));
      kernels::chunk_gemm(out, q, state, 1.0, 0.0, at::Tensor(), precision);
      CHECK(at::equal(out.view({-1, C, D}), kernels::chunk_matmul(q_flat, state_flat, 1.0, at::Tensor(), precision)));
      // q k^T with k transposed in place, into a permuted out ([N] outermost in memory).
      at::Tensor scores_storage = at::full({N, B, H, C, C}, NAN, f32);
      at::Tensor scores = scores_storage.permute({1, 2, 0, 3, 4});
      REQUIRE(kernels::chunk_gemm_apply(scores, q, k.transpose(-1, -2), precision));
      kernels::chunk_gemm(scores, q, k.transpose(-1, -2), -0.5, 0.0, scale, precision);
      const at::Tensor scores_want = kernels::chunk_matmul(q_flat, k_flat.transpose(1, 2), -0.5, scale_flat, precision);
      CHECK(at::equal(scores.contiguous().view({-1, C, C}), scores_want));
    }
    // A sum of two bf16 products with column scales, one launch.
    const at::Tensor column_scale = at::randn({B, H, N, D}, f32);
    const std::vector<GemmTerm> terms{GemmTerm{q, state, 1.0, at::Tensor()}, GemmTerm{k, state, -0.75, column_scale}};
    const std::vector<GemmTerm> flat_terms{GemmTerm{q_flat, state_flat, 1.0, at::Tensor()},
                                           GemmTerm{k_flat, state_flat, -0.75, column_scale.view({-1, D})}};
    at::Tensor sum = at::full({B, H, N, C, D}, NAN, f32);
    REQUIRE(kernels::chunk_gemm_sum_apply(sum, terms, GemmPrecision::Bf16));
    kernels::chunk_gemm_sum(sum, terms, 0.0, GemmPrecision::Bf16);
    CHECK(at::equal(sum.view({-1, C, D}), kernels::chunk_matmul_sum(flat_terms, GemmPrecision::Bf16)));
  }
}

namespace {

// What a sum of terms with row scales and row dots gives, in float64 on the CPU from the operands' values as
// the products take them (bf16 products: rounded to bf16): out = sum_i diag(row_scale_i) P_i + beta out0 with
// P_i = alpha_i a_i b_i diag(column_scale_i), and each dotted term's [batch, ceil(n/64), m] row dots of P_i
// with dot_with_i. Also the scales the errors are held to: the same sums of absolute values.
struct RowTermsWant {
  at::Tensor out, out_scale;
  std::vector<at::Tensor> dots, dots_scale;  // per term (undefined where the term has no dots)
};
RowTermsWant row_terms_want(const std::vector<kernels::GemmTerm>& terms, const at::Tensor& out0, double beta,
                            bool bf16_products) {
  const auto f64 = [&](const at::Tensor& x) {
    return (bf16_products ? x.to(at::kBFloat16) : x).to(at::kCPU, at::kDouble).contiguous();
  };
  const auto exact = [](const at::Tensor& x) { return x.to(at::kCPU, at::kDouble).contiguous(); };
  RowTermsWant want;
  want.out = beta * exact(out0);
  want.out_scale = std::abs(beta) * exact(out0).abs();
  for (const kernels::GemmTerm& term : terms) {
    const at::Tensor a = f64(term.a), b = f64(term.b);
    at::Tensor p = term.alpha * at::matmul(a, b), p_abs = std::abs(term.alpha) * at::matmul(a.abs(), b.abs());
    if (term.column_scale.defined()) {
      const at::Tensor s = exact(term.column_scale).unsqueeze(-2);
      p = p * s, p_abs = p_abs * s.abs();
    }
    if (term.dot_with.defined()) {
      const at::Tensor with = exact(term.dot_with);
      const int64_t n = p.size(-1), tiles = (n + 63) / 64;
      const auto tile_sums = [&](const at::Tensor& x) {
        std::vector<at::Tensor> parts;
        for (int64_t j = 0; j < tiles; ++j)
          parts.push_back(x.narrow(-1, 64 * j, std::min<int64_t>(64, n - 64 * j)).sum(-1));
        return at::stack(parts, -2);
      };
      want.dots.push_back(tile_sums(p * with));
      want.dots_scale.push_back(tile_sums(p_abs * with.abs()));
    } else {
      want.dots.emplace_back();
      want.dots_scale.emplace_back();
    }
    if (term.row_scale.defined()) {
      const at::Tensor s = exact(term.row_scale).unsqueeze(-1);
      p = p * s, p_abs = p_abs * s.abs();
    }
    want.out = want.out + p;
    want.out_scale = want.out_scale + p_abs;
  }
  return want;
}

double scaled_error(const at::Tensor& got, const at::Tensor& want, const at::Tensor& scale) {
  return ((got.to(at::kCPU, at::kDouble) - want).abs() / scale.clamp_min(1e-30)).max().item<double>();
}

// A term with a row scale and, where `with` is given, its row dots into a fresh NaN-poisoned tensor.
kernels::GemmTerm row_term(const at::Tensor& a, const at::Tensor& b, double alpha, const at::Tensor& row_scale,
                           const at::Tensor& with) {
  kernels::GemmTerm term(a, b, alpha);
  term.row_scale = row_scale;
  if (with.defined()) {
    std::vector<int64_t> shape = with.sizes().vec();
    const int64_t m = shape[shape.size() - 2], n = shape.back();
    shape[shape.size() - 2] = (n + 63) / 64;
    shape.back() = m;
    term.dot_with = with;
    term.dots = at::full(shape, NAN, with.options().dtype(at::kFloat));
  }
  return term;
}

}  // namespace

// Off CUDA the sum runs term by term: each term's product apart, its dots, its row scale, then into out.
// fp32 within 1e-5 of float64 per element on its own scale (the partial second tile of n = 80 included);
// a term's dots without dot_with, or dots of the wrong shape, refused.
TEST_CASE("chunk gemm: row scales and row dots on the CPU are the sums the header defines", "[kernels][chunk_gemm]") {
  at::manual_seed(37);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  using kernels::GemmPrecision;
  using kernels::GemmTerm;
  const int64_t batch = 3, m = 32, n = 80;
  const at::Tensor a1 = at::randn({batch, m, 24}, f32), b1 = at::randn({batch, 24, n}, f32);
  const at::Tensor a2 = at::randn({batch, m, 40}, f32), b2 = at::randn({batch, n, 40}, f32).transpose(1, 2);
  const at::Tensor with = at::randn({batch, m, n}, f32), row_scale = at::randn({batch, m}, f32);
  for (const GemmPrecision precision : {GemmPrecision::Fp32, GemmPrecision::Bf16}) {
    INFO("bf16 products " << (precision == GemmPrecision::Bf16));
    std::vector<GemmTerm> terms{GemmTerm(a1, b1, 0.5, at::randn({batch, n}, f32)),
                                row_term(a2, b2, -1.5, row_scale, with), row_term(a1, b1, 2.0, at::Tensor(), with)};
    const at::Tensor out0 = at::randn({batch, m, n}, f32);
    at::Tensor out = out0.clone();
    kernels::chunk_gemm_sum(out, terms, 0.25, precision);
    const RowTermsWant want = row_terms_want(terms, out0, 0.25, precision == GemmPrecision::Bf16);
    CHECK(scaled_error(out, want.out, want.out_scale) <= 1e-5);
    for (size_t i = 1; i < terms.size(); ++i) {
      INFO("term " << i);
      CHECK(terms[i].dots.sizes() == at::IntArrayRef({batch, 2, m}));
      CHECK(scaled_error(terms[i].dots, want.dots[i], want.dots_scale[i]) <= 1e-5);
    }
  }
  at::Tensor out = at::empty({batch, m, n}, f32);
  GemmTerm alone(a1, b1);
  alone.dots = at::empty({batch, 2, m}, f32);
  CHECK_THROWS_WITH(kernels::chunk_gemm_sum(out, {alone}, 0.0), Catch::Contains("come together"));
  GemmTerm misshapen = row_term(a1, b1, 1.0, at::Tensor(), with);
  misshapen.dots = at::empty({batch, 1, m}, f32);
  CHECK_THROWS_WITH(kernels::chunk_gemm_sum(out, {misshapen}, 0.0), Catch::Contains("ceil(n / 64)"));
}

namespace {

// The sums of the CUDA test below: up to four terms whose orientations change once along the list (the GDN
// backward's dq and dk: [row, row] then [row, column]; [column, row] three times then [row, column]), or one
// term with its row scale and dots (dv), with row scales, column scales and row dots (dot_with bf16 with its
// rows on 16 bytes, which the kernel stages in shared memory, bf16 with rows 2 elements past that, read in
// place, or fp32), bf16 operands.
enum class DotWith { Bf16, Bf16Unaligned, Fp32 };
const char* dot_with_name(DotWith with) {
  return with == DotWith::Bf16 ? "bf16" : with == DotWith::Bf16Unaligned ? "bf16 rows off 16 bytes" : "fp32";
}
struct SumCase {
  std::vector<std::pair<bool, bool>> orientations;  // per term: a's rows contiguous, b's rows contiguous
  std::vector<int64_t> depths;
  int64_t m, n;
};
const std::vector<SumCase> kSumCases{{{{true, true}, {true, false}}, {64, 128}, 64, 128},
                                     {{{false, true}, {false, true}, {false, true}, {true, false}},
                                      {64, 64, 64, 128}, 64, 128},
                                     {{{false, false}, {true, true}, {true, true}}, {40, 64, 32}, 48, 80},
                                     {{{true, false}, {false, true}}, {32, 16}, 64, 32},
                                     {{{false, true}}, {64}, 48, 80}};

std::vector<kernels::GemmTerm> sum_case_terms(const SumCase& c, int64_t batch, DotWith dot_with,
                                              const at::TensorOptions& device) {
  const auto f32 = device.dtype(at::kFloat), bf16 = device.dtype(at::kBFloat16);
  std::vector<kernels::GemmTerm> terms;
  for (size_t i = 0; i < c.orientations.size(); ++i) {
    const at::Tensor a = operand(batch, c.m, c.depths[i], c.orientations[i].first, 8, bf16);
    const at::Tensor b = operand(batch, c.depths[i], c.n, c.orientations[i].second, 0, bf16);
    const bool dotted = i > 0 || c.orientations.size() == 1, scaled = i % 2 == 1 || i + 1 == c.orientations.size();
    const int64_t with_ld = dot_with == DotWith::Bf16Unaligned ? c.n + 2 : c.n;
    const at::Tensor with = dotted ? at::randn({batch, c.m, with_ld}, dot_with == DotWith::Fp32 ? f32 : bf16)
                                         .narrow(-1, 0, c.n)
                                   : at::Tensor();
    kernels::GemmTerm term =
        row_term(a, b, i == 2 ? -0.75 : 1.0, scaled ? at::randn({batch, c.m}, f32) : at::Tensor(), with);
    if (i == 1) term.column_scale = at::randn({batch, c.n}, f32);
    terms.push_back(term);
  }
  return terms;
}

// A GDN gradient's sum as it lies: out a per-chunk view [B,H,N,64,D] of a time-major [B,T,H,D] bf16 tensor (a
// batch of three dims), dO S^T's row scale [B,H,N,64] and its dot_with a per-chunk view too.
struct PerChunkSum {
  at::Tensor grad;  // [B,T,H,D]
  std::vector<kernels::GemmTerm> terms;
  at::Tensor out() const { return grad.unflatten(1, {grad.size(1) / 64, 64}).permute({0, 3, 1, 2, 4}); }
};
PerChunkSum per_chunk_sum(const at::TensorOptions& device) {
  const auto f32 = device.dtype(at::kFloat), bf16 = device.dtype(at::kBFloat16);
  const int64_t B = 2, T = 192, H = 3, D = 128, C = 64, N = T / C;
  const auto per_chunk = [&](const at::Tensor& x) { return x.unflatten(1, {N, C}).permute({0, 3, 1, 2, 4}); };
  const at::Tensor q = per_chunk(at::randn({B, T, H, D}, bf16)), d_o = per_chunk(at::randn({B, T, H, D}, bf16));
  const at::Tensor d_qk = at::randn({B, H, N, C, C}, bf16), k = per_chunk(at::randn({B, T, H, D}, bf16));
  const at::Tensor states = at::randn({B, H, N, D, D}, bf16);
  return {at::full({B, T, H, D}, NAN, bf16),
          {kernels::GemmTerm(d_qk, k), row_term(d_o, states.transpose(-1, -2), 1.0, at::rand({B, H, N, C}, f32), q)}};
}

}  // namespace

// What the kernel takes, checked where no GPU is: the CUDA test's sums (each must be one launch there) pass the
// conditions on their layouts, and sums that miss one of them, or whose orientations change twice, do not.
TEST_CASE("chunk gemm: the sums of row scales and dots the kernel takes by their layouts", "[kernels][chunk_gemm]") {
  using kernels::GemmPrecision;
  at::manual_seed(43);
  const auto cpu = at::TensorOptions();
  for (const SumCase& c : kSumCases)
    for (const DotWith dot_with : {DotWith::Bf16, DotWith::Bf16Unaligned, DotWith::Fp32}) {
      INFO("terms " << c.orientations.size() << " m " << c.m << " n " << c.n
                    << " dot_with " << dot_with_name(dot_with));
      std::vector<kernels::GemmTerm> terms = sum_case_terms(c, 5, dot_with, cpu);
      for (const at::ScalarType out_type : {at::kFloat, at::kBFloat16})
        CHECK(kernels::chunk_gemm_sum_layouts_served(at::empty({5, c.m, c.n}, cpu.dtype(out_type)), terms,
                                                     GemmPrecision::Bf16));
      CHECK_FALSE(kernels::chunk_gemm_sum_layouts_served(at::empty({5, c.m, c.n}), terms, GemmPrecision::Fp32));
      kernels::GemmTerm& last = terms.back();
      last.row_scale = at::randn({5, c.m, 2}).select(2, 0);  // the scale's rows 2 apart: declined
      CHECK_FALSE(kernels::chunk_gemm_sum_layouts_served(at::empty({5, c.m, c.n}), terms, GemmPrecision::Bf16));
      last.row_scale = at::randn({5, c.m});
      last.dots = at::empty({5, (c.n + 63) / 64 + 1, c.m});
      CHECK_FALSE(kernels::chunk_gemm_sum_layouts_served(at::empty({5, c.m, c.n}), terms, GemmPrecision::Bf16));
    }
  const PerChunkSum sum = per_chunk_sum(cpu);
  CHECK(kernels::chunk_gemm_sum_layouts_served(sum.out(), sum.terms, GemmPrecision::Bf16));
  std::vector<kernels::GemmTerm> unbatched = sum.terms;
  unbatched[1].row_scale = unbatched[1].row_scale.flatten(0, 2);  // [B H N, 64]: not out's batch
  CHECK_FALSE(kernels::chunk_gemm_sum_layouts_served(sum.out(), unbatched, GemmPrecision::Bf16));
  const at::Tensor a = operand(4, 64, 64, true, 0, at::kBFloat16);
  const at::Tensor b_rows = operand(4, 64, 64, true, 0, at::kBFloat16);
  const at::Tensor b_columns = operand(4, 64, 64, false, 0, at::kBFloat16);
  const std::vector<kernels::GemmTerm> three{kernels::GemmTerm(a, b_rows), kernels::GemmTerm(a, b_columns),
                                             kernels::GemmTerm(a, b_rows)};
  CHECK_FALSE(kernels::chunk_gemm_sum_layouts_served(at::empty({4, 64, 64}), three, GemmPrecision::Bf16));
}

// On CUDA, bf16 products on bf16 operands: the sums above in one launch, into fp32 and bf16 outs, and the
// per-chunk view; every output poisoned. Each element within 1e-5 of float64 on its own scale (fp32
// accumulation of exact bf16 products), the bf16 out the fp32 one rounded bit for bit; orientations changing
// twice are not one launch.
TEST_CASE("chunk gemm: row scales row dots and two groups of orientations on CUDA", "[kernels][gpu][chunk_gemm]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  const test::PoisonOutputs poison;
  at::manual_seed(41);
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  const auto f32 = cuda.dtype(at::kFloat), bf16 = cuda.dtype(at::kBFloat16);
  using kernels::GemmPrecision;
  using kernels::GemmTerm;
  for (const SumCase& c : kSumCases) {
    const int64_t batch = 5;
    for (const DotWith dot_with : {DotWith::Bf16, DotWith::Bf16Unaligned, DotWith::Fp32}) {
      INFO("terms " << c.orientations.size() << " m " << c.m << " n " << c.n
                    << " dot_with " << dot_with_name(dot_with));
      std::vector<GemmTerm> terms = sum_case_terms(c, batch, dot_with, cuda);
      at::Tensor out = at::full({batch, c.m, c.n}, NAN, f32);
      REQUIRE(kernels::chunk_gemm_sum_apply(out, terms, GemmPrecision::Bf16));
      kernels::chunk_gemm_sum(out, terms, 0.0, GemmPrecision::Bf16);
      const RowTermsWant want = row_terms_want(terms, at::zeros({batch, c.m, c.n}, f32), 0.0, true);
      CHECK(scaled_error(out, want.out, want.out_scale) <= 1e-5);
      for (size_t i = 0; i < terms.size(); ++i) {
        INFO("term " << i);
        if (terms[i].dots.defined()) CHECK(scaled_error(terms[i].dots, want.dots[i], want.dots_scale[i]) <= 1e-5);
      }
      // A bf16 out: the same sum rounded; the dots again, the same bits.
      std::vector<at::Tensor> dots_before(terms.size());
      for (size_t i = 0; i < terms.size(); ++i)
        if (terms[i].dots.defined()) dots_before[i] = terms[i].dots.clone(), terms[i].dots.fill_(NAN);
      at::Tensor rounded = at::full({batch, c.m, c.n}, NAN, bf16);
      REQUIRE(kernels::chunk_gemm_sum_apply(rounded, terms, GemmPrecision::Bf16));
      kernels::chunk_gemm_sum(rounded, terms, 0.0, GemmPrecision::Bf16);
      CHECK(at::equal(rounded, out.to(at::kBFloat16)));
      for (size_t i = 0; i < terms.size(); ++i)
        if (terms[i].dots.defined()) CHECK(at::equal(terms[i].dots, dots_before[i]));
    }
  }
  // The per-chunk view of a time-major gradient.
  PerChunkSum sum = per_chunk_sum(cuda);
  const std::vector<GemmTerm>& terms = sum.terms;
  REQUIRE(kernels::chunk_gemm_sum_apply(sum.out(), terms, GemmPrecision::Bf16));
  at::Tensor view = sum.out();
  kernels::chunk_gemm_sum(view, terms, 0.0, GemmPrecision::Bf16);
  const RowTermsWant want = row_terms_want(terms, at::zeros(view.sizes(), f32), 0.0, true);
  // The fp32 sum's bound plus the rounding to bf16: half a unit in the last place, at most 2^-8 of the value
  // (8 significant bits: a value just above a power of two is 2^-8 of itself from the next one down).
  CHECK(scaled_error(view, want.out, 1e-5 * want.out_scale + std::ldexp(1.0, -8) * want.out.abs()) <= 1.0);
  CHECK(scaled_error(terms[1].dots, want.dots[1], want.dots_scale[1]) <= 1e-5);
  // Orientations that change twice along the list: term by term, not one launch, the same sum.
  const at::Tensor a = operand(4, 64, 64, true, 0, bf16);
  const at::Tensor b_rows = operand(4, 64, 64, true, 0, bf16), b_columns = operand(4, 64, 64, false, 0, bf16);
  const std::vector<GemmTerm> three{GemmTerm(a, b_rows), GemmTerm(a, b_columns), GemmTerm(a, b_rows, 0.5)};
  at::Tensor out = at::full({4, 64, 64}, NAN, f32);
  CHECK_FALSE(kernels::chunk_gemm_sum_apply(out, three, GemmPrecision::Bf16));
  kernels::chunk_gemm_sum(out, three, 0.0, GemmPrecision::Bf16);
  const RowTermsWant three_want = row_terms_want(three, at::zeros({4, 64, 64}, f32), 0.0, true);
  CHECK(scaled_error(out, three_want.out, three_want.out_scale) <= 1e-5);
}
