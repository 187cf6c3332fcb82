// Shared by the kernels' tests (tests/test_kernels_*.cpp).
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "model/mixer.h"
#include "test_helpers.h"

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace prime::test {

// The names of the autograd nodes behind `root` (which kernels' functions a graph holds).
inline std::set<std::string> graph_node_names(const at::Tensor& root) {
  std::set<std::string> names;
  std::vector<torch::autograd::Node*> pending{root.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!pending.empty()) {
    torch::autograd::Node* node = pending.back();
    pending.pop_back();
    if (!node || !seen.insert(node).second) continue;
    names.insert(node->name());
    for (const auto& edge : node->next_edges()) pending.push_back(edge.function.get());
  }
  return names;
}

// Whether any of `names` contains `part`.
inline bool any_contains(const std::set<std::string>& names, const std::string& part) {
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return n.find(part) != std::string::npos; });
}

// While alive, every output a kernel launcher allocates starts as NaN (PRIME_KERNELS_POISON=1),
// so an element a kernel leaves unwritten fails the comparison.
struct PoisonOutputs {
  ScopedEnv poison{"PRIME_KERNELS_POISON", "1"};
};

// While alive, cuBLAS runs fp32 matmuls in full fp32 (no TF32), as the torch-ops references
// the kernels are compared with must.
struct FullFp32Matmuls {
  FullFp32Matmuls() : previous_(at::globalContext().allowTF32CuBLAS()) {
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~FullFp32Matmuls() { at::globalContext().setAllowTF32CuBLAS(previous_); }
  FullFp32Matmuls(const FullFp32Matmuls&) = delete;
  FullFp32Matmuls& operator=(const FullFp32Matmuls&) = delete;

 private:
  bool previous_;
};

// ||got - want|| / ||want|| (Frobenius norms, float64 on the CPU): the kernels' error measure.
inline double norm_relative_error(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor a = got.to(at::kCPU, at::kDouble), b = want.to(at::kCPU, at::kDouble);
  return (a - b).norm().item<double>() / std::max(b.norm().item<double>(), 1e-30);
}

#ifdef PRIME_WITH_CUDA
// Captures `work` into `graph` on a side stream, as a decode step is captured: nothing runs until
// graph.replay() (which then runs on the current stream).
inline void capture(at::cuda::CUDAGraph& graph, const std::function<void()>& work) {
  const c10::cuda::CUDAStream stream = at::cuda::getStreamFromPool();
  at::cuda::getCurrentCUDAStream().synchronize();
  {
    const c10::cuda::CUDAStreamGuard guard(stream);
    graph.capture_begin();
    work();
    graph.capture_end();
  }
  stream.synchronize();
}

// A mixer's step (x [B, T, hidden] on CUDA) through tokens 0..T-2 on two fresh caches, then token
// T-1 eagerly on the first and as a replayed CUDA graph on the second: both outputs and caches.
struct GraphedStep {
  at::Tensor eager, graphed;
  std::unique_ptr<model::LayerCache> eager_cache, graph_cache;
};

template <typename Mixer>
GraphedStep graphed_last_step(Mixer& mixer, const at::Tensor& x) {
  const int64_t B = x.size(0), T = x.size(1);
  GraphedStep out{{}, {}, mixer.make_cache(B, x.device()), mixer.make_cache(B, x.device())};
  for (int64_t t = 0; t + 1 < T; ++t) {
    mixer.step(x.narrow(1, t, 1), *out.eager_cache);
    mixer.step(x.narrow(1, t, 1), *out.graph_cache);
  }
  const at::Tensor last = x.narrow(1, T - 1, 1).clone();
  out.eager = mixer.step(last, *out.eager_cache);
  at::cuda::CUDAGraph graph;
  capture(graph, [&] { out.graphed = mixer.step(last, *out.graph_cache); });
  graph.replay();
  at::cuda::getCurrentCUDAStream().synchronize();
  return out;
}
#endif

}  // namespace prime::test
