// Shared helpers of the SSM mixer tests: weights under a prefix, seeded inputs, the relative error
// measure, printed agreement figures, every form against a reference, and a finite-difference
// gradient check.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <iomanip>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "model/mixer.h"
#include "model/weights.h"
#include "reference/random_weights.h"

namespace prime::testing {

// These tests run thousands of tiny ops (one per token in the recurrent and step forms); handing
// each to a thread pool costs more than the op, and on a shared 2-core machine it made the files
// 10x slower. One thread for the scope of a test case, restored afterwards.
class SingleThreaded {
 public:
  SingleThreaded() : previous_(at::get_num_threads()) { at::set_num_threads(1); }
  ~SingleThreaded() { at::set_num_threads(previous_); }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int previous_;
};

// Reference weights (float64, prefix-relative names) as a mixer's TensorMap in `dtype`.
inline model::TensorMap with_prefix(const reference::Weights& weights, const std::string& prefix,
                                    at::ScalarType dtype) {
  model::TensorMap map;
  for (const auto& [name, tensor] : weights) map[prefix + name] = tensor.to(dtype).contiguous();
  return map;
}

// Seeded N(0,1) input [B,T,hidden], float64 (never zeros).
inline at::Tensor random_input(int64_t batch, int64_t length, int64_t hidden, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return reference::testing::random_normal({batch, length, hidden}, 1.0, rng);
}

// max|a - b| / max|b|, in float64.
inline double max_rel_error(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor a64 = a.detach().to(at::kCPU).to(at::kDouble);
  const at::Tensor b64 = b.detach().to(at::kCPU).to(at::kDouble);
  const double scale = b64.abs().max().item<double>();
  return (a64 - b64).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

// One line per measured figure, greppable: "[agreement] <type> <check> <shape>: <error>".
inline double report(const std::string& type, const std::string& check, const std::string& shape,
                     double error) {
  std::cout << "[agreement] " << type << " " << check << " " << shape << ": " << std::scientific
            << std::setprecision(2) << error << std::defaultfloat << std::endl;
  return error;
}

// Every form of `mixer` against the float64 reference `expected`: chunked, recurrent, step by
// step, and a prefill split in two through the cache. Prints each figure; returns the worst.
inline double forms_vs_reference(model::SsmMixer& mixer, const at::Tensor& x, const at::Tensor& expected,
                                 const std::string& name) {
  const std::string type = mixer.symbol();
  double worst = report(type, "chunked-vs-reference", name, max_rel_error(mixer.forward(x, nullptr), expected));
  worst = std::max(worst, report(type, "recurrent-vs-reference", name,
                                 max_rel_error(mixer.forward_recurrent(x, nullptr), expected)));
  auto cache = mixer.make_cache(x.size(0), x.device());
  std::vector<at::Tensor> steps;
  for (int64_t t = 0; t < x.size(1); ++t) steps.push_back(mixer.step(x.narrow(1, t, 1), *cache));
  worst = std::max(worst, report(type, "step-vs-reference", name, max_rel_error(at::cat(steps, 1), expected)));
  auto split_cache = mixer.make_cache(x.size(0), x.device());
  const int64_t half = x.size(1) / 2;
  const at::Tensor split = at::cat({mixer.forward(x.narrow(1, 0, half), split_cache.get()),
                                    mixer.forward(x.narrow(1, half, x.size(1) - half), split_cache.get())},
                                   1);
  return std::max(worst, report(type, "split-prefill-vs-reference", name, max_rel_error(split, expected)));
}

// Gradient check in float64: autograd gradients of loss() with respect to each named tensor
// (leaves with requires_grad) against central finite differences at `samples` entries spread
// over the tensor. Returns max over tensors of max|autograd - fd| / max|fd| and prints each.
inline double check_gradients(const std::string& type, const std::function<at::Tensor()>& loss,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              int64_t samples = 6, double eps = 1e-6) {
  for (const auto& [name, tensor] : tensors) {
    if (tensor.grad().defined()) tensor.mutable_grad() = at::Tensor();
  }
  loss().backward();
  double worst = 0.0;
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor grad = tensor.grad().contiguous();
    double* data = tensor.data_ptr<double>();  // perturbed in place, outside autograd's view
    const int64_t count = std::min<int64_t>(samples, tensor.numel());
    double max_diff = 0.0, max_fd = 0.0;
    for (int64_t s = 0; s < count; ++s) {
      const int64_t index = s * tensor.numel() / count + (tensor.numel() / count) / 2;
      const double saved = data[index];
      data[index] = saved + eps;
      const double plus = loss().item<double>();
      data[index] = saved - eps;
      const double minus = loss().item<double>();
      data[index] = saved;
      const double fd = (plus - minus) / (2 * eps);
      max_diff = std::max(max_diff, std::abs(grad.data_ptr<double>()[index] - fd));
      max_fd = std::max(max_fd, std::abs(fd));
    }
    const double error = max_diff / (max_fd > 0 ? max_fd : 1.0);
    report(type, "gradcheck d/d" + name, "(f64, " + std::to_string(count) + " entries)", error);
    worst = std::max(worst, error);
  }
  return worst;
}

// "B=2 T=130 Hq=4 Hkv=1 D=16 d=32" for the printed figures.
inline std::string shape_name(int64_t batch, int64_t length, int64_t q_heads, int64_t kv_heads,
                              int64_t head_dim, int64_t hidden) {
  return "B=" + std::to_string(batch) + " T=" + std::to_string(length) + " Hq=" +
         std::to_string(q_heads) + " Hkv=" + std::to_string(kv_heads) + " D=" +
         std::to_string(head_dim) + " d=" + std::to_string(hidden);
}

}  // namespace prime::testing
