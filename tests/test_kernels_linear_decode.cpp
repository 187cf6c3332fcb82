// kernels/linear_decode: the decode projection y = x Wᵀ (+ bias), reached through model::linear,
// against a float64 reference on the CPU (from the same rounded inputs) and against at::linear on
// CUDA (policy Torch); 1 to 4 rows of x, K from one 16-byte pack to 12288 (partial and full trips
// of the loads), N from 1 to 4100 (one and two features per warp, odd N); bf16, fp16 and fp32,
// with and without bias; outputs poisoned first; operands it does not serve run at::linear; a CUDA
// graph replays it.
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
