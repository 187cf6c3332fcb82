// model::flash_prefill: a prompt's chunk attending to everything a KV cache holds (bottom-right
// causal mask) in one flash attention call, against a float64 reference written out on the CPU and
// the masked SDPA form (policy Torch), with grouped query heads, chunks shorter than the cache and
// as long; then a model with attention layers prefilled in uneven chunks equals its one-shot
// forward and the masked form's chunked prefill.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <array>
#include <limits>
#include <vector>

#include "kernels/common/policy.h"
#include "model/flash_prefill.h"
#include "model/hybrid_model.h"
#include "test_helpers.h"
#include "test_hybrid_util.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

// softmax(scale q kᵀ) v with query i seeing keys 0 .. Tk - Tq + i, float64 on the CPU.
at::Tensor bottom_right_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const at::Tensor qd = q.to(at::kCPU, at::kDouble), kd = k.to(at::kCPU, at::kDouble), vd = v.to(at::kCPU, at::kDouble);
  const int64_t G = q.size(1) / k.size(1), Tq = q.size(2), Tk = k.size(2);
  const at::Tensor scores = at::matmul(qd, kd.repeat_interleave(G, 1).transpose(-1, -2)) * scale;
  const at::Tensor qi = at::arange(Tq, at::kLong).unsqueeze(1) + (Tk - Tq), kj = at::arange(Tk, at::kLong).unsqueeze(0);
  const at::Tensor masked = scores.masked_fill((kj > qi), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(masked, -1), vd.repeat_interleave(G, 1));
}

}  // namespace

TEST_CASE("flash prefill: never applies to CPU tensors or fp32", "[attention][prefill]") {
  const at::Tensor q = at::randn({1, 4, 3, 64}), kv = at::randn({1, 2, 9, 64});
  CHECK_FALSE(model::flash_prefill_apply(q, kv, kv));
  CHECK_FALSE(model::flash_prefill_apply(q.to(at::kBFloat16), kv.to(at::kBFloat16), kv.to(at::kBFloat16)));
}

TEST_CASE("flash prefill: a chunk against the cache equals float64 and the masked form", "[attention][prefill][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  at::NoGradGuard no_grad;
  at::manual_seed(3);
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  // (B, Hq, Hkv, Tq, Tk, D): chunks behind a prefix, a chunk as long as the cache, GQA 1 to 4.
  const std::vector<std::array<int64_t, 6>> shapes = {
      {2, 8, 2, 100, 357, 128}, {1, 4, 4, 64, 64, 64}, {3, 6, 2, 17, 1000, 64}, {1, 32, 8, 513, 1700, 128}};
  for (const auto& [B, Hq, Hkv, Tq, Tk, D] : shapes) {
    const at::Tensor q = at::randn({B, Hq, Tq, D}, options);
    const at::Tensor k = at::randn({B, Hkv, Tk, D}, options), v = at::randn({B, Hkv, Tk, D}, options);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    REQUIRE(model::flash_prefill_apply(q, k, v));
    const at::Tensor want = bottom_right_reference(q, k, v, scale);
    const at::Tensor ours = model::flash_prefill(q, k, v, scale);
    REQUIRE(ours.sizes() == q.sizes());
    const at::Tensor qi = at::arange(Tq, at::kLong).unsqueeze(1) + (Tk - Tq), kj = at::arange(Tk, at::kLong).unsqueeze(0);
    const at::Tensor masked = at::scaled_dot_product_attention(q, k, v, (kj <= qi).to(at::kCUDA), 0.0, false, scale,
                                                               /*enable_gqa=*/Hq != Hkv);
    const double ours_error = test::norm_relative_error(ours, want);
    const double masked_error = test::norm_relative_error(masked, want);
    INFO("(B,Hq,Hkv,Tq,Tk,D)=(" << B << "," << Hq << "," << Hkv << "," << Tq << "," << Tk << "," << D
                                << "): flash " << ours_error << ", masked SDPA " << masked_error);
    CHECK(ours_error <= 1e-2);  // bf16 inputs and output
    CHECK(ours_error <= std::max(2.0 * masked_error, 2e-3));
  }
}

TEST_CASE("flash prefill: chunked prefill of a model equals its one-shot forward", "[attention][prefill][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  at::NoGradGuard no_grad;
  const at::Device cuda(at::kCUDA, 0);
  auto built = test::build_hybrid({"*", "GDN", "*", "SWA"}, {{"window_size", 5}, {"num_sink_tokens", 2}}, 64);
  model::HybridModel model(built.config, model::prepare_weights(built.weights, {cuda, at::kBFloat16}));
  const at::Tensor ids = at::randint(0, 97, {2, 41}, at::kLong);
  const auto chunked = [&](kernels::Policy policy) {
    const kernels::ScopedKernelPolicy scoped(policy);
    auto cache = model.make_cache(2, 41);
    std::vector<at::Tensor> parts;
    for (const auto& [begin, length] : std::vector<std::pair<int64_t, int64_t>>{{0, 11}, {11, 17}, {28, 13}})
      parts.push_back(model.forward(ids.narrow(1, begin, length), &cache).cpu());
    return at::cat(parts, 1);
  };
  const at::Tensor full = model.forward(ids).cpu();
  const at::Tensor ours = chunked(kernels::Policy::Auto), masked = chunked(kernels::Policy::Torch);
  const double vs_full = test::norm_relative_error(ours, full), vs_masked = test::norm_relative_error(ours, masked);
  INFO("chunked prefill with flash: vs one-shot " << vs_full << ", vs masked chunks " << vs_masked
                                                  << " (masked chunks vs one-shot "
                                                  << test::norm_relative_error(masked, full) << ")");
  CHECK(vs_full <= 5e-2);
  CHECK(vs_masked <= 5e-2);
}
