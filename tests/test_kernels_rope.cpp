// kernels/rope: the fused rotary embedding, reached through model::Rope (apply with a start,
// apply_at a device position, apply_positions per token), bitwise equal to the torch form on
// CUDA (policy Torch) and close to the torch form in float64 on the CPU; default, llama3 and yarn
// rope; q and k as strided views of a projection, misaligned and with a non-unit element stride;
// outputs poisoned with NaN first; never taken when autograd must track the rotation. The decode
// step's fused q_norm + k_norm + rotation (kernels::rope_norm_rotate) against the norms' and the
// rotation's kernels (bitwise), their torch forms and float64.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/rope/rope.h"
#include "model/rms_norm.h"
#include "model/rope.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

constexpr int64_t kMaxPositions = 4096;

std::vector<std::pair<std::string, io::RopeConfig>> rope_configs() {
  std::vector<std::pair<std::string, io::RopeConfig>> configs;
  io::RopeConfig rope;
  rope.theta = 1000000.0;
  configs.emplace_back("default", rope);
  rope.type = "llama3", rope.factor = 8.0, rope.original_max_position_embeddings = 512;
  configs.emplace_back("llama3", rope);
  rope.type = "yarn", rope.factor = 4.0, rope.original_max_position_embeddings = 1024;
  configs.emplace_back("yarn", rope);  // attention scaling != 1: cos and sin carry it
  return configs;
}

// q [B,T,Hq,D] and k [B,T,Hkv,D] as the attention layer gets them: slices of one projection
// output [B,T,(Hq+2Hkv)*D] (strided views). offset shifts them by elements (misaligned rows);
// element_stride 2 interleaves a second tensor (a non-unit stride along D).
std::pair<at::Tensor, at::Tensor> projection_views(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                                                   at::ScalarType type, int64_t offset, int64_t element_stride) {
  const int64_t width = (Hq + 2 * Hkv) * D;
  const at::Tensor projection =
      at::randn({B, T, (width + offset) * element_stride}, at::TensorOptions().device(at::kCUDA).dtype(type));
  const at::Tensor rows = projection.as_strided({B, T, width}, {projection.stride(0), projection.stride(1), element_stride},
                                                offset * element_stride);
  at::Tensor q = rows.narrow(-1, 0, Hq * D).unflatten(-1, {Hq, D});
  at::Tensor k = rows.narrow(-1, Hq * D, Hkv * D).unflatten(-1, {Hkv, D});
  return {q, k};
}

struct Rotated {
  at::Tensor q, k;
};

// The rotation three ways: the kernel (policy Auto, which must serve it), the torch form on CUDA
// (policy Torch) and the torch form in float64 on the CPU; returns {kernel, torch, float64}.
std::vector<Rotated> rotate_three_ways(const io::RopeConfig& config, int64_t D, const at::Tensor& q,
                                       const at::Tensor& k,
                                       const std::function<std::pair<at::Tensor, at::Tensor>(
                                           const model::Rope&, const at::Tensor&, const at::Tensor&)>& apply) {
  const model::Rope rope(config, D, kMaxPositions);
  std::vector<Rotated> out;
  {
    const kernels::ScopedKernelPolicy auto_policy(kernels::Policy::Auto);
    auto [qr, kr] = apply(rope, q, k);
    out.push_back({qr, kr});
  }
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    auto [qr, kr] = apply(rope, q, k);
    out.push_back({qr, kr});
  }
  const model::Rope rope64(config, D, kMaxPositions);
  auto [q64, k64] = apply(rope64, q.to(at::kCPU, at::kDouble), k.to(at::kCPU, at::kDouble));
  out.push_back({q64, k64});
  return out;
}

double tolerance(at::ScalarType type) {
  if (type == at::kBFloat16) return 1e-2;
  if (type == at::kHalf) return 2e-3;
  return 5e-5;  // fp32 angles at positions < 600 against float64 ones
}

// Kernel bitwise equal to the torch form, close to float64, contiguous, in q's dtype.
void check_rotated(const std::vector<Rotated>& r, const at::Tensor& q, const at::Tensor& k, const std::string& what) {
  INFO(what);
  const Rotated &kernel = r[0], &torch = r[1], &reference = r[2];
  REQUIRE(kernel.q.scalar_type() == q.scalar_type());
  REQUIRE(kernel.k.scalar_type() == k.scalar_type());
  CHECK(kernel.q.is_contiguous());
  CHECK(kernel.k.is_contiguous());
  CHECK(kernel.q.sizes() == q.sizes());
  CHECK(kernel.k.sizes() == k.sizes());
  CHECK(at::equal(kernel.q, torch.q));
  CHECK(at::equal(kernel.k, torch.k));
  const double q_error = test::norm_relative_error(kernel.q, reference.q);
  const double k_error = test::norm_relative_error(kernel.k, reference.k);
  CHECK(q_error <= tolerance(q.scalar_type()));
  CHECK(k_error <= tolerance(q.scalar_type()));
  if (q_error > tolerance(q.scalar_type()) / 4 || k_error > tolerance(q.scalar_type()) / 4)
    std::cout << "[kernels][rope] " << what << ": q vs float64 " << q_error << ", k " << k_error << "\n";
}

// The kernel serves q, k with fp32 tables of `table_batch` x T rows (as the form under test
// passes them), so the policy Auto run below is the kernel's.
void require_served(const at::Tensor& q, const at::Tensor& k, int64_t table_batch) {
  const at::Tensor table = at::ones({table_batch, q.size(1), 1, q.size(3)}, q.options().dtype(at::kFloat));
  REQUIRE(kernels::rope_apply(q, k, table, table));
}

std::string describe(const std::string& rope, at::ScalarType type, int64_t D, const std::string& form) {
  return rope + " " + c10::toString(type) + " D=" + std::to_string(D) + " " + form;
}

}  // namespace

TEST_CASE("RoPE kernel: never applies to CPU tensors or float64", "[kernels][rope]") {
  at::NoGradGuard no_grad;
  const at::Tensor q = at::randn({1, 3, 4, 8}), k = at::randn({1, 3, 2, 8});
  const at::Tensor cos = at::randn({1, 3, 1, 8}), sin = at::randn({1, 3, 1, 8});
  CHECK_FALSE(kernels::rope_apply(q, k, cos, sin));
  CHECK_FALSE(kernels::rope_apply(q.to(at::kDouble), k.to(at::kDouble), cos.to(at::kDouble), sin.to(at::kDouble)));
}

// The GPU tests trust the float64 torch form: here it meets the rotation written out by hand.
TEST_CASE("RoPE reference: the float64 torch form is the pairwise rotation by position x frequency",
          "[kernels][rope]") {
  at::NoGradGuard no_grad;
  at::manual_seed(3);
  const int64_t B = 2, T = 5, D = 16, start = 7;
  for (const auto& [name, config] : rope_configs()) {
    INFO(name);
    const model::Rope rope(config, D, kMaxPositions);
    const at::Tensor q = at::randn({B, T, 3, D}, at::kDouble), k = at::randn({B, T, 1, D}, at::kDouble);
    auto [frequencies, scaling] = rope.inv_freq(start + T);
    const at::Tensor angles = at::arange(start, start + T, at::kDouble).view({1, T, 1, 1}) *
                              frequencies.to(at::kDouble).view({1, 1, 1, D / 2});
    const at::Tensor c = angles.cos() * scaling, s = angles.sin() * scaling;
    auto by_hand = [&](const at::Tensor& x) {
      const at::Tensor x1 = x.narrow(-1, 0, D / 2), x2 = x.narrow(-1, D / 2, D / 2);
      return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
    };
    auto [qr, kr] = rope.apply(q, k, start);
    CHECK(test::norm_relative_error(qr, by_hand(q)) <= 1e-12);
    CHECK(test::norm_relative_error(kr, by_hand(k)) <= 1e-12);
  }
}

TEST_CASE("RoPE kernel: bitwise equal to the torch form, close to float64, for every form and dtype",
          "[kernels][gpu][rope]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(17);
  const int64_t B = 2, Hq = 6, Hkv = 2;
  const auto device_long = at::TensorOptions().device(at::kCUDA).dtype(at::kLong);
  for (const auto& [name, config] : rope_configs()) {
    for (const at::ScalarType type : {at::kBFloat16, at::kHalf, at::kFloat}) {
      for (const int64_t D : {64, 128, 256}) {
        // Prefill of 37 tokens from position 5; strided views of a projection.
        {
          auto [q, k] = projection_views(B, 37, Hq, Hkv, D, type, 0, 1);
          require_served(q, k, 1);
          const auto r = rotate_three_ways(config, D, q, k, [](const model::Rope& rope, const at::Tensor& q,
                                                               const at::Tensor& k) { return rope.apply(q, k, 5); });
          check_rotated(r, q, k, describe(name, type, D, "apply T=37 start=5"));
        }
        // Decode: one token at a position held on the device (apply_at, cos [1,1,1,D]).
        {
          auto [q, k] = projection_views(B, 1, Hq, Hkv, D, type, 0, 1);
          require_served(q, k, 1);
          const at::Tensor position = at::full({1}, 517, device_long);
          const auto r = rotate_three_ways(config, D, q, k,
                                           [&](const model::Rope& rope, const at::Tensor& q, const at::Tensor& k) {
                                             return rope.apply_at(q, k, position.to(q.device()));
                                           });
          check_rotated(r, q, k, describe(name, type, D, "apply_at T=1 position 517"));
        }
        // Per-token positions (apply_positions, cos [B,T,1,D]).
        {
          auto [q, k] = projection_views(B, 9, Hq, Hkv, D, type, 0, 1);
          require_served(q, k, B);
          const at::Tensor positions = at::randint(0, 600, {B, 9}, device_long);
          const auto r = rotate_three_ways(config, D, q, k,
                                           [&](const model::Rope& rope, const at::Tensor& q, const at::Tensor& k) {
                                             return rope.apply_positions(q, k, positions.to(q.device()), 600);
                                           });
          check_rotated(r, q, k, describe(name, type, D, "apply_positions T=9"));
        }
      }
    }
  }
}

TEST_CASE("RoPE kernel: misaligned rows and a non-unit element stride take the single-element path",
          "[kernels][gpu][rope]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(19);
  const io::RopeConfig config;
  for (const at::ScalarType type : {at::kBFloat16, at::kFloat}) {
    for (const auto& [offset, element_stride] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {0, 2}, {3, 2}}) {
      auto [q, k] = projection_views(3, 11, 4, 1, 64, type, offset, element_stride);
      require_served(q, k, 1);
      const auto r = rotate_three_ways(config, 64, q, k, [](const model::Rope& rope, const at::Tensor& q,
                                                            const at::Tensor& k) { return rope.apply(q, k, 2); });
      check_rotated(r, q, k,
                    describe("default", type, 64,
                             "offset " + std::to_string(offset) + " element stride " + std::to_string(element_stride)));
    }
  }
}

TEST_CASE("RoPE kernel: not taken when autograd tracks the rotation, or under policy Torch", "[kernels][gpu][rope]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const auto on_cuda = at::TensorOptions().device(at::kCUDA);
  const at::Tensor q = at::randn({1, 4, 4, 32}, on_cuda.dtype(at::kBFloat16)).requires_grad_(true);
  const at::Tensor k = at::randn({1, 4, 2, 32}, on_cuda.dtype(at::kBFloat16));
  const at::Tensor cos = at::randn({1, 4, 1, 32}, on_cuda), sin = at::randn({1, 4, 1, 32}, on_cuda);
  {
    const at::AutoGradMode grad_mode(true);
    CHECK_FALSE(kernels::rope_apply(q, k, cos, sin));
    CHECK(kernels::rope_apply(q.detach(), k, cos, sin));  // nothing to track
    const model::Rope rope(io::RopeConfig{}, 32, kMaxPositions);
    auto [qr, kr] = rope.apply(q, k, 0);
    CHECK(qr.requires_grad());  // the torch form ran: its graph reaches q
  }
  at::NoGradGuard no_grad;
  CHECK(kernels::rope_apply(q, k, cos, sin));
  CHECK_FALSE(kernels::rope_apply(q, k, cos.to(at::kBFloat16), sin.to(at::kBFloat16)));  // tables must be fp32
  CHECK_FALSE(kernels::rope_apply(q, k.to(at::kHalf), cos, sin));                         // one dtype
  CHECK_FALSE(kernels::rope_apply(q, k, cos.narrow(3, 0, 16), sin.narrow(3, 0, 16)));   // D of the tables
  const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
  CHECK_FALSE(kernels::rope_apply(q, k, cos, sin));
}

// ---------------------------------------------------------------------------------------------
// q_norm + k_norm + rotation in one launch (the attention layer's decode step).

namespace {

constexpr double kNormEps = 1e-6;

// x [B,T,H,D] normalised per head (float64 or the dtype's torch form, as model::rms_norm computes
// it) then rotated by cos/sin [1 or B,T,1,D] as the torch form of model::Rope rotates.
at::Tensor norm_then_rotate_torch(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cos,
                                  const at::Tensor& sin) {
  const at::Tensor normed = model::rms_norm(x, weight, kNormEps);
  const int64_t half = x.size(3) / 2;
  const at::Tensor xf = normed.to(cos.scalar_type());
  const at::Tensor turned = at::cat({-xf.narrow(-1, half, half), xf.narrow(-1, 0, half)}, -1);
  return (xf * cos + turned * sin).to(x.scalar_type());
}

// Angles as a Rope makes them: fp32 [1 or B, T, 1, D], both halves equal.
std::pair<at::Tensor, at::Tensor> random_angles(int64_t table_batch, int64_t T, int64_t D) {
  const at::Tensor half = at::rand({table_batch, T, 1, D / 2}, at::TensorOptions().device(at::kCUDA)) * 600.0;
  const at::Tensor emb = at::cat({half, half}, -1);
  return {emb.cos(), emb.sin()};
}

}  // namespace

TEST_CASE("RoPE with q/k norm: never applies to CPU tensors", "[kernels][rope]") {
  at::NoGradGuard no_grad;
  const at::Tensor q = at::randn({1, 1, 4, 16}), k = at::randn({1, 1, 2, 16}), w = at::randn({16});
  const at::Tensor cos = at::randn({1, 1, 1, 16}), sin = at::randn({1, 1, 1, 16});
  CHECK_FALSE(kernels::rope_norm_apply(q, k, w, w, cos, sin));
}

TEST_CASE("RoPE with q/k norm: bitwise the norms' and rotation's kernels, close to the torch form and float64",
          "[kernels][gpu][rope]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(23);
  const int64_t Hq = 6, Hkv = 2;
  for (const at::ScalarType type : {at::kBFloat16, at::kHalf, at::kFloat}) {
    for (const int64_t D : {32, 64, 128, 256}) {
      if (type == at::kFloat && D > 128) continue;  // 64 fp32 packs: more than a warp's lanes
      for (const auto& [B, T] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {2, 1}, {3, 5}}) {
        for (const bool views : {true, false}) {
          for (const int64_t table_batch : {int64_t{1}, B}) {
            const std::string what = std::string(c10::toString(type)) + " D=" + std::to_string(D) + " B=" +
                                     std::to_string(B) + " T=" + std::to_string(T) +
                                     (views ? " projection views" : " contiguous") + " tables " +
                                     std::to_string(table_batch);
            INFO(what);
            at::Tensor q, k;
            if (views) {
              std::tie(q, k) = projection_views(B, T, Hq, Hkv, D, type, 0, 1);
            } else {
              const auto options = at::TensorOptions().device(at::kCUDA).dtype(type);
              q = at::randn({B, T, Hq, D}, options);
              k = at::randn({B, T, Hkv, D}, options);
            }
            // q and k of unequal sizes (in place: views stay views).
            q.mul_(3.0);
            const auto options = q.options();
            const at::Tensor q_weight = (1.0 + 0.1 * at::randn({D}, options.dtype(at::kFloat))).to(type);
            const at::Tensor k_weight = (1.0 + 0.1 * at::randn({D}, options.dtype(at::kFloat))).to(type);
            const auto [cos, sin] = random_angles(table_batch, T, D);
            REQUIRE(kernels::rope_norm_apply(q, k, q_weight, k_weight, cos, sin));
            const auto [qf, kf] = kernels::rope_norm_rotate(q, k, q_weight, k_weight, kNormEps, cos, sin);
            CHECK(qf.is_contiguous());
            CHECK(kf.is_contiguous());
            REQUIRE(qf.sizes() == q.sizes());
            REQUIRE(kf.sizes() == k.sizes());
            // The two kernels it replaces (model::rms_norm's kernel, then the rotation's).
            const at::Tensor qn = model::rms_norm(q, q_weight, kNormEps), kn = model::rms_norm(k, k_weight, kNormEps);
            REQUIRE(kernels::rope_apply(qn, kn, cos, sin));
            const auto [qs, ks] = kernels::rope_rotate(qn, kn, cos, sin);
            CHECK(at::equal(qf, qs));
            CHECK(at::equal(kf, ks));
            // The torch forms on CUDA, and float64 on the CPU.
            at::Tensor qt, kt;
            {
              const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
              qt = norm_then_rotate_torch(q, q_weight, cos, sin);
              kt = norm_then_rotate_torch(k, k_weight, cos, sin);
            }
            const auto cpu64 = [](const at::Tensor& t) { return t.to(at::kCPU, at::kDouble); };
            const at::Tensor q64 = norm_then_rotate_torch(cpu64(q), cpu64(q_weight), cpu64(cos), cpu64(sin));
            const at::Tensor k64 = norm_then_rotate_torch(cpu64(k), cpu64(k_weight), cpu64(cos), cpu64(sin));
            // Against float64: the norm's two roundings and the rotation's one (bf16 2^-9 each).
            const double bound = type == at::kBFloat16 ? 1e-2 : type == at::kHalf ? 2e-3 : 1e-5;
            const double q_error = test::norm_relative_error(qf, q64), k_error = test::norm_relative_error(kf, k64);
            const double q_torch = test::norm_relative_error(qt, q64), k_torch = test::norm_relative_error(kt, k64);
            CHECK(q_error <= bound);
            CHECK(k_error <= bound);
            CHECK(q_error <= 2 * q_torch + 1e-6);
            CHECK(k_error <= 2 * k_torch + 1e-6);
            CHECK(test::norm_relative_error(qf, qt) <= bound);
            CHECK(test::norm_relative_error(kf, kt) <= bound);
            if (B == 2 && views && table_batch == 1)
              std::cout << "[kernels][rope] norm+rotate " << what << ": q vs float64 " << q_error << " (torch form "
                        << q_torch << "), k " << k_error << " (" << k_torch << ")\n";
          }
        }
      }
    }
  }
}

TEST_CASE("RoPE with q/k norm: the model's decode-step tables, graph replay, and the operands it refuses",
          "[kernels][gpu][rope]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  at::NoGradGuard no_grad;
  at::manual_seed(29);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t D = 128;
  io::RopeConfig config;
  config.theta = 1000000.0;
  const model::Rope rope(config, D, kMaxPositions);
  const at::Tensor position = at::full({1}, 1234, at::TensorOptions().device(at::kCUDA).dtype(at::kLong));
  const at::Tensor q = at::randn({1, 1, 32, D}, bf16), k = at::randn({1, 1, 8, D}, bf16);
  const at::Tensor q_weight = at::randn({D}, bf16), k_weight = at::randn({D}, bf16);
  // The tables of Rope::apply_at: the fused launch equals the norms then apply_at bit for bit.
  const auto [cos, sin] = rope.angles_at(q, position);
  REQUIRE(kernels::rope_norm_apply(q, k, q_weight, k_weight, cos, sin));
  const auto [qf, kf] = kernels::rope_norm_rotate(q, k, q_weight, k_weight, kNormEps, cos, sin);
  const auto [qa, ka] = rope.apply_at(model::rms_norm(q, q_weight, kNormEps), model::rms_norm(k, k_weight, kNormEps),
                                      position);
  CHECK(at::equal(qf, qa));
  CHECK(at::equal(kf, ka));
#ifdef PRIME_WITH_CUDA
  // A CUDA graph replays it with new q and k in place.
  at::cuda::CUDAGraph graph;
  std::pair<at::Tensor, at::Tensor> graphed;
  test::capture(graph, [&] { graphed = kernels::rope_norm_rotate(q, k, q_weight, k_weight, kNormEps, cos, sin); });
  q.mul_(-0.5);
  k.add_(1.0);
  graph.replay();
  const auto [qn, kn] = kernels::rope_norm_rotate(q, k, q_weight, k_weight, kNormEps, cos, sin);
  CHECK(at::equal(graphed.first, qn));
  CHECK(at::equal(graphed.second, kn));
  CHECK_FALSE(at::equal(graphed.first, qf));
#endif
  // Refused: an odd number of packs (D = 72 bf16: 9), more than 32 packs (fp32 D = 256), rows off
  // 16 bytes, a strided element, weights of another dtype or size or needing a gradient, policy Torch.
  const auto refuses = [&](const at::Tensor& q2, const at::Tensor& k2, const at::Tensor& w) {
    const int64_t d = q2.size(3);
    const at::Tensor table = at::ones({1, q2.size(1), 1, d}, q2.options().dtype(at::kFloat));
    return !kernels::rope_norm_apply(q2, k2, w, w, table, table);
  };
  CHECK(refuses(at::randn({1, 1, 4, 72}, bf16), at::randn({1, 1, 2, 72}, bf16), at::randn({72}, bf16)));
  const auto fp32 = bf16.dtype(at::kFloat);
  CHECK(refuses(at::randn({1, 1, 4, 256}, fp32), at::randn({1, 1, 2, 256}, fp32), at::randn({256}, fp32)));
  CHECK_FALSE(refuses(at::randn({1, 1, 4, 128}, fp32), at::randn({1, 1, 2, 128}, fp32), at::randn({128}, fp32)));
  {
    auto [q2, k2] = projection_views(1, 1, 4, 2, 64, at::kBFloat16, 1, 1);  // one element off 16 bytes
    CHECK(refuses(q2, k2, at::randn({64}, bf16)));
    auto [q3, k3] = projection_views(1, 1, 4, 2, 64, at::kBFloat16, 0, 2);  // element stride 2
    CHECK(refuses(q3, k3, at::randn({64}, bf16)));
  }
  CHECK(refuses(q, k, q_weight.to(at::kFloat)));
  CHECK(refuses(q, k, at::randn({64}, bf16)));
  {
    const at::AutoGradMode grad_mode(true);
    CHECK(refuses(q, k, q_weight.detach().clone().requires_grad_(true)));
  }
  const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
  CHECK(refuses(q, k, q_weight));
}
