// chunks::state_scan (the chunk-start scan of GKA's two states and Mamba-2's SSD, one autograd
// node with a hand-written reverse scan) against the loop autograd unrolls: starts, final state
// and the gradients of the initial state, the contributions and the decays, in float64 on random
// inputs, with and without restarts, a broadcast initial state and one chunk; and on CUDA, where
// both walks run on kernels/ssd_chunk's chunk_state_walk, in fp32 against the same float64 loop
// and against the torch-ops walk (policy Torch).
#include <catch2/catch.hpp>
#include <torch/csrc/autograd/autograd.h>

#include <vector>

#include "kernels/common/policy.h"
#include "kernels/ssd_chunk/ssd_chunk.h"
#include "model/ssm_chunks.h"
#include "test_documents_util.h"
#include "test_helpers.h"
#include "util/error.h"

using namespace prime;

namespace {

// The recurrence of state_scan written out, for autograd to differentiate.
std::pair<at::Tensor, at::Tensor> unrolled(const at::Tensor& initial, const at::Tensor& contribution,
                                           const at::Tensor& decay, const at::Tensor& keep) {
  std::vector<at::Tensor> starts;
  at::Tensor state = initial.expand({contribution.size(0), contribution.size(1), contribution.size(3),
                                     contribution.size(4)});
  for (int64_t c = 0; c < contribution.size(2); ++c) {
    if (keep.defined()) state = state * keep[c];
    starts.push_back(state);
    state = decay.select(2, c).unsqueeze(-1).unsqueeze(-1) * state + contribution.select(2, c);
  }
  return {at::stack(starts, 2), state};
}

struct Case {
  int64_t chunks;
  std::vector<int64_t> initial_shape;  // empty: no initial state (B is its first size otherwise)
  bool restarts;                       // at the middle chunk
  int64_t batch = 2;
  bool many_restarts = false;  // also at chunks 0, 1, 2, 3, 6 and the last (9 chunks: 7 segments)
};

}  // namespace

TEST_CASE("chunk state scan: starts, final state and every gradient equal the unrolled loop", "[ssm][chunks]") {
  const int64_t B = 2, H = 3, D1 = 5, D2 = 4;
  const std::vector<Case> cases = {{7, {B, H, D1, D2}, false}, {7, {B, H, D1, D2}, true},
                                   {6, {1, H, D1, D2}, true},  {5, {}, true},
                                   {1, {B, H, D1, D2}, false}, {1, {}, true}};
  for (const Case& test_case : cases) {
    at::manual_seed(11 + test_case.chunks);
    const auto options = at::TensorOptions().dtype(at::kDouble);
    const at::Tensor contribution = at::randn({B, H, test_case.chunks, D1, D2}, options).requires_grad_(true);
    const at::Tensor decay = at::rand({B, H, test_case.chunks}, options).add(0.2).requires_grad_(true);
    const at::Tensor initial = test_case.initial_shape.empty()
                                   ? at::Tensor()
                                   : at::randn(test_case.initial_shape, options).requires_grad_(true);
    at::Tensor keep;
    if (test_case.restarts) {
      keep = at::ones({test_case.chunks}, options);
      keep[test_case.chunks / 2] = 0.0;  // a restart mid-way (the only chunk when there is one)
    }
    std::vector<at::Tensor> leaves{contribution, decay};
    if (initial.defined()) leaves.push_back(initial);

    const auto [starts, final_state] = model::chunks::state_scan(initial, contribution, decay, keep);
    const at::Tensor zero = at::zeros({B, H, D1, D2}, options);
    const auto [want_starts, want_final] = unrolled(initial.defined() ? initial : zero, contribution, decay, keep);
    CHECK(testing::norm_relative(starts, want_starts) < 1e-14);
    CHECK(testing::norm_relative(final_state, want_final) < 1e-14);

    // A loss on both outputs, and on each alone (the other's gradient is then undefined).
    const at::Tensor w_starts = at::randn(starts.sizes(), options), w_final = at::randn(final_state.sizes(), options);
    for (int uses = 0; uses < 3; ++uses) {
      const auto loss = [&](const at::Tensor& s, const at::Tensor& f) {
        at::Tensor value = at::zeros({}, options);
        if (uses != 2) value = value + (s * w_starts).sum();
        if (uses != 1) value = value + (f * w_final).sum();
        return value;
      };
      // With one chunk and the loss on the starts alone, the contribution has no use: its
      // gradient is zero (or undefined; with a restart at that chunk nothing is used).
      const auto gradients = [&](const at::Tensor& value) {
        std::vector<at::Tensor> grads(leaves.size());
        if (value.requires_grad())
          grads = torch::autograd::grad({value}, leaves, {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
        for (size_t i = 0; i < grads.size(); ++i)
          if (!grads[i].defined()) grads[i] = at::zeros_like(leaves[i]);
        return grads;
      };
      const auto got = gradients(loss(starts, final_state));
      const auto want = gradients(loss(want_starts, want_final));
      for (size_t i = 0; i < leaves.size(); ++i) {
        INFO("chunks " << test_case.chunks << ", restarts " << test_case.restarts << ", loss on " << uses
                       << ", leaf " << i);
        CHECK(got[i].sizes() == leaves[i].sizes());
        if (want[i].norm().item<double>() == 0.0)
          CHECK(got[i].norm().item<double>() == 0.0);
        else
          CHECK(testing::norm_relative(got[i], want[i]) < 1e-13);
      }
    }
  }
}

TEST_CASE("chunk state scan: mismatched shapes are refused with the expected shapes", "[ssm][chunks]") {
  const at::Tensor contribution = at::randn({2, 3, 4, 5, 5});
  CHECK_THROWS_WITH(model::chunks::state_scan(at::Tensor(), contribution, at::rand({2, 3, 3}), at::Tensor()),
                    Catch::Contains("decays [B,H,n]"));
  CHECK_THROWS_WITH(model::chunks::state_scan(at::Tensor(), contribution, at::rand({2, 3, 4}), at::ones({3})),
                    Catch::Contains("keep must be [4]"));
}

TEST_CASE("chunk state scan on CUDA: the kernel walks equal float64 and the torch-ops walks", "[ssm][chunks][gpu][kernels]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const at::Device cuda(at::kCUDA);
  const auto fp32 = at::TensorOptions().device(cuda).dtype(at::kFloat);
  // (D1, D2) = (16, 12): state rows of 192, a multiple of 4 (16-byte accesses); (5, 3): 15, scalar.
  // With restarts, the kernel walks the segments between them in parallel, a share of them per
  // block slot. On an H200 (132 SMs), batch 200 (600 rows) gets one slot for its 7 segments and
  // batch 40 (120 rows) five; batch 2 one slot per segment.
  for (const auto& [D1, D2] : {std::pair<int64_t, int64_t>{16, 12}, {5, 3}}) {
    const int64_t H = 3;
    const std::vector<Case> cases = {{9, {2, H, D1, D2}, false},          {9, {2, H, D1, D2}, true},
                                     {6, {1, H, D1, D2}, true},           {5, {}, true},
                                     {1, {2, H, D1, D2}, false},          {9, {2, H, D1, D2}, true, 2, true},
                                     {9, {40, H, D1, D2}, true, 40, true}, {9, {}, true, 200, true}};
    for (const Case& test_case : cases) {
      const int64_t B = test_case.batch;
      INFO("D1 " << D1 << ", D2 " << D2 << ", B " << B << ", chunks " << test_case.chunks << ", restarts "
                 << test_case.restarts << ", many " << test_case.many_restarts);
      REQUIRE(kernels::chunk_state_walk_apply(at::empty({B * H, test_case.chunks, D1 * D2}, fp32)));
      at::manual_seed(29 + test_case.chunks);
      const at::Tensor contribution = at::randn({B, H, test_case.chunks, D1, D2}, fp32);
      const at::Tensor decay = at::rand({B, H, test_case.chunks}, fp32).add(0.2);
      const at::Tensor initial =
          test_case.initial_shape.empty() ? at::Tensor() : at::randn(test_case.initial_shape, fp32);
      at::Tensor keep;
      if (test_case.restarts) {
        keep = at::ones({test_case.chunks}, fp32);
        keep[test_case.chunks / 2] = 0.0;
        if (test_case.many_restarts)
          for (const int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{3}, int64_t{6}, test_case.chunks - 1})
            keep[chunk] = 0.0;
      }
      const at::Tensor w_starts = at::randn({B, H, test_case.chunks, D1, D2}, fp32),
                       w_final = at::randn({B, H, D1, D2}, fp32);
      // Starts, final state and the gradients of (contribution, decay, initial) under a loss on both.
      const auto run = [&](const at::TensorOptions& options, bool reference) {
        const auto leaf = [&](const at::Tensor& t) {
          return t.defined() ? t.to(options).detach().requires_grad_(true) : at::Tensor();
        };
        const at::Tensor c = leaf(contribution), d = leaf(decay), i = leaf(initial);
        const at::Tensor k = keep.defined() ? keep.to(options) : at::Tensor();
        const at::Tensor zero = at::zeros({B, H, D1, D2}, options);
        const auto [starts, final_state] =
            reference ? unrolled(i.defined() ? i : zero, c, d, k) : model::chunks::state_scan(i, c, d, k);
        const at::Tensor loss = (starts * w_starts.to(options)).sum() + (final_state * w_final.to(options)).sum();
        std::vector<at::Tensor> leaves{c, d};
        if (i.defined()) leaves.push_back(i);
        std::vector<at::Tensor> out{starts.detach(), final_state.detach()};
        for (const at::Tensor& g : torch::autograd::grad({loss}, leaves)) out.push_back(g);
        return out;
      };
      const auto want = run(at::TensorOptions().dtype(at::kDouble).device(at::kCPU), /*reference=*/true);
      const auto got = run(fp32, false);
      std::vector<at::Tensor> torch_form;
      {
        const kernels::ScopedKernelPolicy torch_ops(kernels::Policy::Torch);
        torch_form = run(fp32, false);
      }
      for (size_t i = 0; i < want.size(); ++i) {
        INFO("output " << i << " (starts, final, d contribution, d decay, d initial)");
        CHECK(testing::norm_relative(got[i].cpu().to(at::kDouble), want[i]) < 2e-6);
        CHECK(testing::norm_relative(got[i].cpu().to(at::kDouble), torch_form[i].cpu().to(at::kDouble)) < 2e-6);
      }
    }
  }
}
