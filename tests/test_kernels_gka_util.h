// Shared by the tests of kernels/gka_solve (tests/test_kernels_gka*.cpp): random chunk systems as
// GKA's chunked form builds them, and the solve through chunk_solve with its gradients.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <cstdint>
#include <vector>

#include "model/gka_core.h"

namespace prime::test {

// A chunked system as GKA's chunked form builds it, float64 on the CPU: unit keys scaled by
// beta, decays e^{G_t - G_j} from log decays < 0, H_0 a decayed sum of key outer products (PSD),
// and f = ||H_t||_F computed from H_t itself.
struct System {
  at::Tensor q, keys, start, weights, from_start, frob;
  std::vector<at::Tensor> all() const { return {q, keys, start, weights, from_start, frob}; }
};

// With `broadcast`, H_0 is one state per (batch, head) [B,H,1,D,D] and the decays are shared by
// every chunk and head (W [C,C], e^{G} [C,1]): the forward broadcasts them and their gradients
// are summed back.
inline System random_system(int64_t B, int64_t H, int64_t n, int64_t C, int64_t D, uint64_t seed,
                            bool broadcast = false) {
  at::manual_seed(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  System s;
  const auto unit = [&](std::vector<int64_t> sizes) {
    const at::Tensor x = at::randn(sizes, f64);
    return x / x.norm(2, -1, true);
  };
  s.q = unit({B, H, n, C, D});
  s.keys = unit({B, H, n, C, D}) * (at::rand({B, H, n, C, 1}, f64) * 0.9 + 0.1);
  const at::Tensor history = unit({B, H, broadcast ? 1 : n, 3 * D, D}) * 0.5;
  s.start = at::matmul(history.transpose(-1, -2), history);
  const at::Tensor g = broadcast ? -at::rand({C}, f64) * 0.2 - 0.005 : -at::rand({B, H, n, C}, f64) * 0.2 - 0.005;
  const at::Tensor G = at::cumsum(g, -1);
  const at::Tensor lower = at::ones({C, C}, f64).tril();
  s.weights = at::exp((G.unsqueeze(-1) - G.unsqueeze(-2)) * lower) * lower;
  s.from_start = at::exp(G).unsqueeze(-1);
  // H_t = e^{G_t} H_0 + sum_{j<=t} w_tj k_j k_j^T, [B,H,n,C,D,D].
  const at::Tensor outer = s.keys.unsqueeze(-1) * s.keys.unsqueeze(-2);  // [..,C,D,D]
  const at::Tensor H_t = s.from_start.unsqueeze(-1) * s.start.unsqueeze(-3) +
                         at::einsum("...tj,...jab->...tab", {s.weights.expand({B, H, n, C, C}), outer});
  s.frob = H_t.pow(2).sum({-2, -1}).sqrt().unsqueeze(-1);
  return s;
}

inline std::vector<at::Tensor> leaves(const System& s, const at::Device& device, at::ScalarType type) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : s.all()) out.push_back(t.to(device, type).detach().requires_grad_(true));
  return out;
}

struct SolveRun {
  at::Tensor x;
  std::vector<at::Tensor> grads;
};

// x and the gradients of sum(x * probe) in the six inputs; `unrolled` leaves the iteration to
// autograd (the reference), else chunk_solve's own node (the kernel on CUDA under Auto).
inline SolveRun run_solve(const std::vector<at::Tensor>& in, const at::Tensor& probe, int iterations, bool unrolled) {
  const model::gka_detail::ChunkSystem system{in[1], in[2], in[3], in[4]};
  const at::Tensor x = unrolled
                           ? model::gka_detail::chunk_solve_unrolled(in[0], system, in[5], 0.02, iterations)
                           : model::gka_detail::chunk_solve(in[0], system, in[5], 0.02, iterations);
  SolveRun run{x.detach(), {}};
  const at::Tensor loss = (x * probe.to(x.options())).sum();
  for (const at::Tensor& grad : torch::autograd::grad({loss}, in)) run.grads.push_back(grad.detach());
  return run;
}

}  // namespace prime::test
