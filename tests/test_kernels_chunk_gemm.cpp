// kernels/chunk_gemm: batched fp32 products on the 3xTF32 tensor cores, against float64 products
// on the CPU. Every element is held to a relative bound on its own scale, |got - want| <= 1e-5 *
// (|a| |b|)_ij (3xTF32 keeps about 2^-21 per term; plain TF32 would miss it by ~50x), for both
// orientations of each operand (transposed views are read in place), partial tiles, a depth not a
// multiple of the 32-deep stage, row strides wider than the rows, a broadcast operand, beta 0
// (out poisoned with NaN: unread, and any element left unwritten fails), 1 and -0.5, with and
// without a scale on the product's columns.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

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
