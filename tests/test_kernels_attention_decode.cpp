// kernels/attention_decode: the split-K decode attention, reached through model::attend_one_token,
// against a float64 reference (scores, softmax and the weighted sum written out on the CPU from
// the same rounded inputs) and against the torch form on CUDA; GQA groups 1 to 8, head dims 32 to
// 256, slot counts from 1 to 33K (one range and many), masks that hide slots anywhere; outputs
// poisoned first; operands it does not serve run the torch form; a CUDA graph replays it; and
// static decode of hybrids with attention and SWA layers equals the torch form's.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <array>
#include <string>
#include <vector>

#include "kernels/attention_decode/attention_decode.h"
#include "kernels/common/policy.h"
#include "model/hybrid_model.h"
#include "model/kv_cache.h"
#include "model/step_decoder.h"
#include "test_helpers.h"
#include "test_hybrid_util.h"
#include "test_kernels_util.h"

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

using namespace prime;

namespace {

struct Operands {
  at::Tensor q;                      // [B, Hq, 1, D]
  model::KvCache::StepView view;     // keys, values [B, Hkv, S, D]; visible [S]
  double scale = 0;
};

// Random operands on CUDA in `type`; `hidden` of the slots invisible (never the last one).
Operands make_operands(int64_t B, int64_t Hq, int64_t Hkv, int64_t S, int64_t D, at::ScalarType type,
                       double hidden) {
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(type);
  Operands in;
  in.q = at::randn({B, Hq, 1, D}, options);
  in.view.keys = at::randn({B, Hkv, S, D}, options);
  in.view.values = at::randn({B, Hkv, S, D}, options);
  at::Tensor visible = at::rand({S}, at::TensorOptions().device(at::kCUDA)) >= hidden;
  visible.index_fill_(0, at::full({1}, S - 1, at::TensorOptions().dtype(at::kLong).device(at::kCUDA)), true);
  in.view.visible = visible;
  in.scale = 1.0 / std::sqrt(static_cast<double>(D));
  return in;
}

// softmax(scale q k) v over the visible slots, in float64 on the CPU from the operands' values.
at::Tensor reference(const Operands& in) {
  const at::Tensor q = in.q.to(at::kCPU, at::kDouble), k = in.view.keys.to(at::kCPU, at::kDouble);
  const at::Tensor v = in.view.values.to(at::kCPU, at::kDouble), visible = in.view.visible.cpu();
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3), Hkv = k.size(1), G = Hq / Hkv;
  const at::Tensor expanded_k = k.repeat_interleave(G, 1), expanded_v = v.repeat_interleave(G, 1);
  at::Tensor scores = at::matmul(q, expanded_k.transpose(-1, -2)) * in.scale;  // [B, Hq, 1, S]
  scores.masked_fill_(visible.logical_not(), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(scores, -1), expanded_v).view({B, Hq, 1, D});
}

struct Errors {
  double kernel = 0, torch = 0;  // vs float64
};

Errors compare(const Operands& in) {
  REQUIRE(kernels::attention_decode_apply(in.q, in.view.keys, in.view.values, in.view.visible));
  const at::Tensor want = reference(in);
  const at::Tensor ours = model::attend_one_token(in.q, in.view, in.scale);
  CHECK(ours.scalar_type() == in.q.scalar_type());
  CHECK(ours.sizes() == in.q.sizes());
  CHECK_FALSE(at::isnan(ours).any().item<bool>());
  const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
  const at::Tensor torch = model::attend_one_token(in.q, in.view, in.scale);
  return {test::norm_relative_error(ours, want), test::norm_relative_error(torch, want)};
}

}  // namespace

TEST_CASE("attention decode kernel: never applies to CPU tensors", "[kernels][attention]") {
  const at::Tensor q = at::randn({1, 4, 1, 64}), kv = at::randn({1, 2, 9, 64});
  CHECK_FALSE(kernels::attention_decode_apply(q, kv, kv, at::ones({9}, at::kBool)));
}

TEST_CASE("attention decode kernel: equals float64 and the torch form", "[kernels][gpu][attention]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const test::FullFp32Matmuls full_fp32;
  at::NoGradGuard no_grad;
  at::manual_seed(17);
  // (B, Hq, Hkv, S, D): groups 1..8 (7 runs the 8-head instance), one range (S = 1, 77) and many
  // (4096, 33000 slots), batches that fill the GPU and not.
  const std::vector<std::array<int64_t, 5>> shapes = {
      {2, 8, 2, 1000, 128}, {1, 32, 8, 4096, 128}, {3, 7, 1, 77, 64}, {2, 4, 4, 300, 256},
      {2, 16, 2, 513, 128}, {1, 2, 1, 1, 64},      {5, 4, 2, 33000, 32}, {64, 32, 8, 260, 128}};
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    for (const auto& [B, Hq, Hkv, S, D] : shapes) {
      if (type == at::kFloat && D == 256) continue;  // not served in fp32
      for (const double hidden : {0.0, 0.3}) {
        const std::string what = std::string(c10::toString(type)) + " (B,Hq,Hkv,S,D)=(" + std::to_string(B) + "," +
                                 std::to_string(Hq) + "," + std::to_string(Hkv) + "," + std::to_string(S) + "," +
                                 std::to_string(D) + ") hidden " + std::to_string(hidden);
        const Errors errors = compare(make_operands(B, Hq, Hkv, S, D, type, hidden));
        INFO(what << ": kernel " << errors.kernel << ", torch form " << errors.torch);
        if (type == at::kFloat) {
          CHECK(errors.kernel <= 1e-5);
        } else {
          // bf16 output rounding (2^-9 relative per element) bounds both; the kernel keeps its
          // scores in fp32 where the torch form rounds them to bf16.
          CHECK(errors.kernel <= 5e-3);
          CHECK(errors.kernel <= std::max(2.0 * errors.torch, 1e-3));
        }
      }
    }
  }
}

TEST_CASE("attention decode kernel: only where it serves, the torch form elsewhere",
          "[kernels][gpu][attention]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::manual_seed(19);
  const Operands in = make_operands(2, 8, 2, 50, 64, at::kBFloat16, 0.2);
  const auto applies = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& visible) {
    return kernels::attention_decode_apply(q, k, v, visible);
  };
  const at::Tensor& k = in.view.keys;
  const at::Tensor& v = in.view.values;
  const at::Tensor& visible = in.view.visible;
  {
    at::NoGradGuard no_grad;
    CHECK(applies(in.q, k, v, visible));
    CHECK_FALSE(applies(in.q.to(at::kHalf), k.to(at::kHalf), v.to(at::kHalf), visible));  // half: torch form
    CHECK_FALSE(applies(in.q.to(at::kFloat), k, v, visible));                               // mixed dtypes
    CHECK_FALSE(applies(in.q, k.transpose(2, 3).contiguous().transpose(2, 3), v, visible));  // strided cache
    CHECK_FALSE(applies(in.q.narrow(3, 0, 48), k.narrow(3, 0, 48).contiguous(), v.narrow(3, 0, 48).contiguous(),
                        visible));  // head dim 48
    CHECK_FALSE(applies(at::randn({2, 18, 1, 64}, in.q.options()), k, v, visible));  // 9 heads per KV head
    CHECK_FALSE(applies(in.q, k, v, visible.narrow(0, 0, 49)));
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    CHECK_FALSE(applies(in.q, k, v, visible));
  }
  const at::AutoGradMode grad_mode(true);
  CHECK(applies(in.q, k, v, visible));  // nothing requires grad
  CHECK_FALSE(applies(in.q.detach().requires_grad_(true), k, v, visible));
  // Served or not, attend_one_token gives the same answer within bf16 rounding.
  at::NoGradGuard no_grad;
  const at::Tensor half = model::attend_one_token(in.q.to(at::kHalf), {k.to(at::kHalf), v.to(at::kHalf), visible},
                                                  in.scale);
  CHECK(test::norm_relative_error(half, reference(in)) <= 5e-3);
}

#ifdef PRIME_WITH_CUDA
TEST_CASE("attention decode kernel: a CUDA graph replays it as the eager call", "[kernels][gpu][attention]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  at::manual_seed(23);
  const Operands in = make_operands(3, 32, 8, 2000, 128, at::kBFloat16, 0.1);
  const at::Tensor eager = model::attend_one_token(in.q, in.view, in.scale);
  at::cuda::CUDAGraph graph;
  at::Tensor graphed;
  test::capture(graph, [&] { graphed = model::attend_one_token(in.q, in.view, in.scale); });
  // New keys in place, as a decode step writes its slot: the replay reads them.
  in.view.keys.mul_(0.5);
  graph.replay();
  CHECK(at::equal(graphed, model::attend_one_token(in.q, in.view, in.scale)));
  CHECK_FALSE(at::equal(graphed, eager));
}
#endif

TEST_CASE("attention decode kernel: static decode of hybrids equals the torch form's", "[kernels][gpu][attention]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  at::NoGradGuard no_grad;
  const test::FullFp32Matmuls full_fp32;
  const at::Device cuda(at::kCUDA, 0);
  // Attention and SWA layers (window 5 with 2 sinks wraps its ring), head dims the kernel serves.
  for (const int64_t head_dim : {32, 64}) {
    auto built = test::build_hybrid({"*", "SWA", "GDN", "*"}, {{"window_size", 5}, {"num_sink_tokens", 2}}, head_dim);
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      model::HybridModel model(built.config, model::prepare_weights(built.weights, {cuda, dtype}));
      const at::Tensor ids = at::randint(0, 97, {3, 21}, at::kLong);
      const auto decode = [&](kernels::Policy policy, bool graph) {
        const kernels::ScopedKernelPolicy scoped(policy);
        auto cache = model.make_cache(3, 32);
        std::vector<at::Tensor> parts{model.forward(ids.narrow(1, 0, 7), &cache).cpu()};
        model::StepDecoder decoder(model, cache, 32, graph);
        for (int64_t t = 7; t < ids.size(1); ++t) parts.push_back(decoder.step(ids.select(1, t)).unsqueeze(1).cpu());
        return at::cat(parts, 1);
      };
      const at::Tensor full = model.forward(ids).cpu();
      const at::Tensor torch = decode(kernels::Policy::Torch, false);
      const at::Tensor eager = decode(kernels::Policy::Auto, false);
      const at::Tensor graphed = decode(kernels::Policy::Auto, true);
      const double vs_torch = test::norm_relative_error(eager, torch), vs_full = test::norm_relative_error(eager, full);
      INFO(c10::toString(dtype) << " head dim " << head_dim << ": vs torch form " << vs_torch << ", vs full forward "
                                << vs_full);
      CHECK(vs_torch <= (dtype == at::kFloat ? 1e-5 : 2e-2));
      CHECK(vs_full <= (dtype == at::kFloat ? 1e-5 : 5e-2));
      CHECK(test::norm_relative_error(graphed, eager) <= (dtype == at::kFloat ? 1e-6 : 1e-2));
    }
  }
}
