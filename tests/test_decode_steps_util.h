// Shared by the tests of the SSM mixers' fused decode fronts (tests/test_kernels_*decode_inputs.cpp):
// the short conv's float64 reference and the check of a mixer's decode steps.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <catch2/catch.hpp>

#include <iostream>
#include <string>
#include <vector>

#include "kernels/common/policy.h"
#include "model/mixer.h"
#include "test_kernels_util.h"

namespace prime::test {

// silu(bias + conv over [history, u]) per channel: u [B,C], history [B,C,K-1], weight [C,1,K].
inline at::Tensor reference_conv_silu(const at::Tensor& u, const at::Tensor& history, const at::Tensor& weight,
                               const at::Tensor& bias) {
  const at::Tensor window = at::cat({history, u.unsqueeze(-1)}, -1);  // [B,C,K]
  at::Tensor z = (window * weight.squeeze(1)).sum(-1);
  if (bias.defined()) z = z + bias;
  return z * at::sigmoid(z);
}

// The history a conv step leaves: the last K-1 of [history, u].
inline at::Tensor reference_history(const at::Tensor& u, const at::Tensor& history) {
  return at::cat({history, u.unsqueeze(-1)}, -1).narrow(-1, 1, history.size(-1));
}

// The mixer's step token by token from an empty cache, on the fused kernels (policy Auto) and in
// the torch form (policy Torch), each against `want` (the float64 reference's [B,T,hidden]); then
// a CUDA graph of one fused step against the same step run eagerly from an equal cache.
// `states(cache)` lists the cache's tensors the step updates.
template <typename Mixer, typename States>
inline void check_mixer_steps(Mixer& mixer, const at::Tensor& x, const at::Tensor& want, at::ScalarType type,
                              const std::string& what, const States& states) {
  INFO(what);
  const int64_t B = x.size(0), T = x.size(1);
  at::NoGradGuard no_grad;
  const auto decode = [&](kernels::Policy policy) {
    const kernels::ScopedKernelPolicy scoped(policy);
    const auto cache = mixer.make_cache(B, at::Device(at::kCUDA));
    std::vector<at::Tensor> outs;
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor token = x.narrow(1, t, 1);
      CHECK(mixer.fused_step_applies(token, *cache) == (policy == kernels::Policy::Auto));
      outs.push_back(mixer.step(token, *cache));
    }
    return at::cat(outs, 1);
  };
  const at::Tensor fused = decode(kernels::Policy::Auto), torch_form = decode(kernels::Policy::Torch);
  const double fused_error = relative_error(fused, want), torch_error = relative_error(torch_form, want);
  std::cout << "[kernels][decode] " << what << ": fused step vs float64 " << fused_error << " (torch form "
            << torch_error << "), vs torch form " << relative_error(fused, torch_form) << "\n";
  if (type == at::kFloat) CHECK(fused_error <= 1e-5);
  else CHECK(fused_error <= 2 * torch_error + 1e-3);
#ifdef PRIME_WITH_CUDA
  const GraphedStep graphed = graphed_last_step(mixer, x);
  CHECK(at::equal(graphed.graphed, graphed.eager));
  const std::vector<at::Tensor> eager_states = states(*graphed.eager_cache),
                                graph_states = states(*graphed.graph_cache);
  for (size_t i = 0; i < eager_states.size(); ++i) {
    REQUIRE(graph_states[i].defined() == eager_states[i].defined());
    if (eager_states[i].defined()) CHECK(at::equal(graph_states[i], eager_states[i]));
  }
#endif
}

}  // namespace prime::test
