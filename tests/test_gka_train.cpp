// GKA's training path: the chunked form's Chebyshev solve as one autograd node (recomputing
// its iterates in backward) against autograd of the unrolled iteration, the default solve
// dtype, and what the autograd graph keeps alive between forward and backward.
#include <catch2/catch.hpp>

#include <torch/csrc/autograd/autograd.h>

#include <iomanip>
#include <iostream>

#include "model/gka_core.h"
#include "model/recompute.h"
#include "model/ssm_chunks.h"
#include "test_gka_util.h"
#include "test_helpers.h"
#include "util/error.h"

using namespace prime;
using namespace prime::test_gka;
using model::gka_detail::ChunkSystem;

namespace {

void report(const std::string& what, double value) {
  std::cout << "[gka] " << std::left << std::setw(70) << what << " " << std::scientific
            << std::setprecision(2) << value << std::endl;
}

// The inputs of one chunked solve, leaves that require grad: q and k unit vectors (k scaled by
// a beta in (0,1)), H_0 a PSD sum of earlier keys, per-step decays as the chunked form builds
// them. B=2, 3 heads, 2 chunks of C=5, D=4.
struct SolveLeaves {
  at::Tensor q, keys, start, weights, from_start;
  std::vector<at::Tensor> all() const { return {q, keys, start, weights, from_start}; }
};

SolveLeaves random_leaves(uint64_t seed) {
  at::manual_seed(static_cast<int64_t>(seed));
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto unit = [&](std::vector<int64_t> shape) {
    const at::Tensor t = at::randn(shape, f64);
    return t / t.norm(2, {-1}, true);
  };
  SolveLeaves s;
  s.q = unit({2, 3, 2, 5, 4});
  s.keys = unit({2, 3, 2, 5, 4}) * at::rand({2, 3, 2, 5, 1}, f64);
  const at::Tensor earlier = unit({2, 3, 2, 12, 4}) * at::rand({2, 3, 2, 12, 1}, f64);
  s.start = at::matmul(earlier.transpose(-1, -2), earlier);
  const at::Tensor log_decay = -at::rand({2, 3, 2, 5}, f64) * 0.3;
  s.weights = model::chunks::segment_decay(log_decay);
  s.from_start = at::exp(at::cumsum(log_decay, -1)).unsqueeze(-1);
  for (at::Tensor* t : {&s.q, &s.keys, &s.start, &s.weights, &s.from_start})
    *t = t->detach().requires_grad_(true);
  return s;
}

// ||H_t||_F of every position, densely from the inputs (so its gradient reaches them).
at::Tensor dense_frob(const ChunkSystem& system) {
  const at::Tensor intra = at::einsum("...tj,...jd,...je->...tde",
                                      {system.weights, system.keys, system.keys});
  const at::Tensor H = system.from_start.unsqueeze(-1) * system.start.unsqueeze(-3) + intra;
  return H.pow(2).sum({-2, -1}).sqrt().unsqueeze(-1);
}

// d/d(leaves) of sum(solve * probe), the solve in `type`, by the node or by the unrolled graph.
std::vector<at::Tensor> solve_gradients(const SolveLeaves& leaves, at::ScalarType type,
                                        bool unrolled, bool bp_lambda, int num_iter) {
  const ChunkSystem system{leaves.keys.to(type), leaves.start.to(type), leaves.weights.to(type),
                           leaves.from_start.to(type)};
  const at::Tensor frob = bp_lambda ? dense_frob(system) : dense_frob(system).detach();
  const at::Tensor q = leaves.q.to(type);
  const at::Tensor x = unrolled ? model::gka_detail::chunk_solve_unrolled(q, system, frob, 0.02, num_iter)
                                : model::gka_detail::chunk_solve(q, system, frob, 0.02, num_iter);
  at::manual_seed(7);
  const at::Tensor probe = at::randn(x.sizes(), at::kDouble).to(type);
  return torch::autograd::grad({(x * probe).sum()}, leaves.all());
}

const char* const kLeafNames[] = {"q", "keys", "start", "weights", "from_start"};

}  // namespace

TEST_CASE("GKA chunk solve: recomputing backward equals autograd of the unrolled iteration", "[gka]") {
  // Every input of the node, both bp_lambda settings, N = 1 and 2 (the adjoint bookkeeping's
  // edge cases) and 30, in float64: the two must agree to rounding.
  for (bool bp_lambda : {true, false}) {
    for (int num_iter : {1, 2, 30}) {
      const SolveLeaves leaves = random_leaves(201 + num_iter);
      const auto node = solve_gradients(leaves, at::kDouble, false, bp_lambda, num_iter);
      const auto unrolled = solve_gradients(leaves, at::kDouble, true, bp_lambda, num_iter);
      for (size_t i = 0; i < node.size(); ++i) {
        const double error = rel_error(node[i], unrolled[i]);
        INFO("bp_lambda " << bp_lambda << " N=" << num_iter << " d/d" << kLeafNames[i] << " "
                          << error);
        CHECK(error <= 1e-11);
        CHECK(unrolled[i].abs().max().item<double>() > 0.0);
      }
    }
  }
  // The node in fp32 against the float64 unrolled gradient: the accuracy of the fp32 solve's
  // gradients (measured <= 5e-7 on these inputs).
  for (bool bp_lambda : {true, false}) {
    const SolveLeaves leaves = random_leaves(251);
    const auto node32 = solve_gradients(leaves, at::kFloat, false, bp_lambda, 30);
    const auto reference = solve_gradients(leaves, at::kDouble, true, bp_lambda, 30);
    for (size_t i = 0; i < node32.size(); ++i) {
      const double error = rel_error(node32[i], reference[i]);
      report(std::string("chunk solve fp32 node vs f64 unrolled, bp_lambda=") +
                 (bp_lambda ? "true" : "false") + ", d/d" + kLeafNames[i], error);
      CHECK(error <= 1e-5);
    }
  }
}

TEST_CASE("GKA chunk solve: the split sweep (PRIME_GKA_SWEEP=split) gives the in-loop sweep's gradients",
          "[gka]") {
  // The adjoints alone in the loop, then the gradients of the keys, H_0 and the weights as products
  // of the stacked iterates and adjoints: the same sums in another order. Every input, both
  // bp_lambda settings, N = 1, 2 and 30; float64 to rounding, fp32 within the fp32 node's own bound.
  for (bool bp_lambda : {true, false}) {
    for (int num_iter : {1, 2, 30}) {
      const SolveLeaves leaves = random_leaves(301 + num_iter);
      std::vector<at::Tensor> in_loop, split, split32;
      {
        const test::ScopedEnv form("PRIME_GKA_SWEEP", "in-loop");
        in_loop = solve_gradients(leaves, at::kDouble, false, bp_lambda, num_iter);
      }
      {
        const test::ScopedEnv form("PRIME_GKA_SWEEP", "split");
        split = solve_gradients(leaves, at::kDouble, false, bp_lambda, num_iter);
        split32 = solve_gradients(leaves, at::kFloat, false, bp_lambda, num_iter);
      }
      for (size_t i = 0; i < in_loop.size(); ++i) {
        INFO("bp_lambda " << bp_lambda << " N=" << num_iter << " d/d" << kLeafNames[i]);
        CHECK(in_loop[i].abs().max().item<double>() > 0.0);
        CHECK(rel_error(split[i], in_loop[i]) <= 1e-12);
        CHECK(rel_error(split32[i], in_loop[i]) <= 1e-5);
      }
      // The split form ran: the keys' gradient is summed in another order (not bit for bit the same).
      if (num_iter == 30) CHECK(!at::equal(split[1], in_loop[1]));
    }
  }
  const SolveLeaves leaves = random_leaves(333);
  for (const char* bad : {"split ", "SPLIT", "fused", "1"}) {
    const test::ScopedEnv form("PRIME_GKA_SWEEP", bad);
    CHECK_THROWS_AS(solve_gradients(leaves, at::kDouble, false, true, 2), UserError);
  }
}

TEST_CASE("GKA chunked-form gradients of every input and weight vs the unrolled float64 graph",
          "[gka]") {
  // The chunked form (solve node) against the recurrent form, which autograd differentiates
  // step by step through the unrolled iteration: all weights and x, T = 11 in chunks of 4.
  const Shape shape{12, 4, 4, 2};
  for (bool bp_lambda : {true, false}) {
    const model::GkaConfig config = make_config(shape, {{"chunk_size", 4}, {"bp_lambda", bp_lambda}});
    const model::TensorMap w64 = random_weights(config, 211);
    const at::Tensor x64 = random_input(2, 11, shape.hidden, 212);
    at::manual_seed(213);
    const at::Tensor probe = at::randn({2, 11, shape.hidden}, at::kDouble);
    // Gradients of sum(forward(x) * probe) w.r.t. x and every weight, in `type`.
    auto gradients = [&](at::ScalarType type, bool chunked, std::optional<at::ScalarType> solve) {
      // Fresh leaves (a float64 cast would hand back w64's own tensors).
      model::TensorMap w = cast_weights(w64, type);
      std::vector<at::Tensor> leaves = {x64.to(type).clone().requires_grad_(true)};
      for (auto& [name, tensor] : w) {
        tensor = tensor.clone().requires_grad_(true);
        leaves.push_back(tensor);
      }
      model::GkaMixer mixer(config, w, kPrefix);
      mixer.set_solve_dtype(solve);
      const at::Tensor y = chunked ? mixer.forward(leaves[0], nullptr)
                                   : mixer.forward_recurrent(leaves[0], nullptr);
      return torch::autograd::grad({(y * probe.to(type)).sum()}, leaves);
    };
    const auto reference = gradients(at::kDouble, false, std::nullopt);
    const auto chunked64 = gradients(at::kDouble, true, std::nullopt);
    const auto chunked32 = gradients(at::kFloat, true, at::kFloat);
    std::vector<std::string> names = {"x"};
    for (const auto& item : w64) names.push_back(item.first.substr(kPrefix.size()));
    double worst64 = 0.0, worst32 = 0.0;
    for (size_t i = 0; i < reference.size(); ++i) {
      INFO("bp_lambda " << bp_lambda << " d/d" << names[i]);
      CHECK(reference[i].abs().max().item<double>() > 0.0);
      const double error64 = rel_error(chunked64[i], reference[i]);
      const double error32 = rel_error(chunked32[i], reference[i]);
      CHECK(error64 <= 1e-10);
      CHECK(error32 <= 2e-3);
      worst64 = std::max(worst64, error64);
      worst32 = std::max(worst32, error32);
    }
    const std::string label = std::string("bp_lambda=") + (bp_lambda ? "true" : "false");
    report("chunked f64 gradients vs unrolled f64 (worst weight), " + label, worst64);
    report("chunked fp32-solve gradients vs unrolled f64 (worst weight), " + label, worst32);
  }
}

TEST_CASE("GKA default solve dtype: fp32 only for a layer trained on CUDA or under PRIME_SSM_CORE=bf16", "[gka]") {
  // Inference everywhere and training on the CPU keep the float64 solve (and its 1e-6
  // agreement); a trained layer on CUDA solves in fp32 unless its weights are float64.
  const model::GkaConfig config = make_config(Shape{});
  const model::TensorMap w64 = random_weights(config, 221);
  const at::Device cpu(at::kCPU), cuda(at::kCUDA, 0);  // devices only named, nothing runs there
  for (at::ScalarType type : {at::kDouble, at::kFloat, at::kBFloat16}) {
    INFO(type);
    model::TensorMap w = cast_weights(w64, type);
    model::GkaMixer frozen(config, w, kPrefix);
    CHECK(frozen.solve_dtype(cpu) == at::kDouble);
    CHECK(frozen.solve_dtype(cuda) == at::kDouble);
    w.at(kPrefix + "A_log") = w.at(kPrefix + "A_log").detach().clone().requires_grad_(true);
    model::GkaMixer mixer(config, w, kPrefix);
    CHECK(mixer.solve_dtype(cpu) == at::kDouble);
    CHECK(mixer.solve_dtype(cuda) == (type == at::kDouble ? at::kDouble : at::kFloat));
    {  // PRIME_SSM_CORE=bf16: the bf16 forms take fp32 operands, so a frozen layer on CUDA solves in fp32
      const test::ScopedEnv bf16_core("PRIME_SSM_CORE", "bf16");
      CHECK(frozen.solve_dtype(cuda) == (type == at::kDouble ? at::kDouble : at::kFloat));
      CHECK(frozen.solve_dtype(cpu) == at::kDouble);
    }
    mixer.set_solve_dtype(at::kDouble);
    CHECK(mixer.solve_dtype(cuda) == at::kDouble);
    mixer.set_solve_dtype(at::kFloat);
    CHECK(mixer.solve_dtype(cpu) == at::kFloat);
    mixer.set_solve_dtype(std::nullopt);
    CHECK(mixer.solve_dtype(cpu) == at::kDouble);
  }
}

TEST_CASE("GKA training memory: what the graph keeps does not grow with num_iter", "[gka]") {
  // Bytes still allocated after the forward pass (the output and what its graph saved), for a
  // few and for many Chebyshev iterations. The unrolled graph keeps several tensors of q's size
  // per iteration, so it must grow (which shows the meter sees them); the solve node must not.
  auto retained = [](int num_iter, bool unrolled) {
    const SolveLeaves leaves = random_leaves(231);
    auto meter = std::make_shared<AllocationMeter>(c10::DeviceType::CPU);
    c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, meter);
    const ChunkSystem system{leaves.keys, leaves.start, leaves.weights, leaves.from_start};
    const at::Tensor frob = dense_frob(system);
    const at::Tensor x =
        unrolled ? model::gka_detail::chunk_solve_unrolled(leaves.q, system, frob, 0.02, num_iter)
                 : model::gka_detail::chunk_solve(leaves.q, system, frob, 0.02, num_iter);
    return meter->current;  // x and its graph are still alive here
  };
  const int64_t q_bytes = 2 * 3 * 2 * 5 * 4 * 8;
  const int64_t node_few = retained(4, false), node_many = retained(64, false);
  const int64_t unrolled_few = retained(4, true), unrolled_many = retained(64, true);
  report("bytes kept by the solve node, N=4", static_cast<double>(node_few));
  report("bytes kept by the solve node, N=64", static_cast<double>(node_many));
  report("bytes kept by the unrolled graph, N=4", static_cast<double>(unrolled_few));
  report("bytes kept by the unrolled graph, N=64", static_cast<double>(unrolled_many));
  CHECK(node_many == node_few);
  CHECK(unrolled_many - unrolled_few >= 60 * q_bytes);

  // The whole mixer (chunked form, weights requiring grad): after its forward the graph holds
  // the same bytes for N = 4 and N = 64.
  const Shape shape{32, 8, 4, 2};
  auto mixer_retained = [&](int num_iter) {
    const model::GkaConfig config = make_config(shape, {{"num_iter", num_iter}, {"chunk_size", 8}});
    model::TensorMap w = cast_weights(random_weights(config, 241), at::kFloat);
    for (auto& item : w) item.second.requires_grad_(true);
    model::GkaMixer mixer(config, w, kPrefix);
    const at::Tensor x = random_input(2, 30, shape.hidden, 242).to(at::kFloat);
    auto meter = std::make_shared<AllocationMeter>(c10::DeviceType::CPU);
    c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, meter);
    const at::Tensor y = mixer.forward(x, nullptr);
    const int64_t kept = meter->current;
    torch::autograd::grad({y.pow(2).sum()}, {w.at(kPrefix + "k_proj.weight")});
    return kept;
  };
  const int64_t mixer_few = mixer_retained(4), mixer_many = mixer_retained(64);
  report("bytes kept by a GKA mixer's graph, N=4", static_cast<double>(mixer_few));
  report("bytes kept by a GKA mixer's graph, N=64", static_cast<double>(mixer_many));
  CHECK(mixer_many == mixer_few);
  CHECK(mixer_few > 0);
}

TEST_CASE("GKA under activation recomputation: the solve node nested in a recomputed backward",
          "[gka]") {
  // --recompute runs the layer again inside the backward pass, so the solve node's backward
  // runs within another node's backward: the gradients must not change.
  const Shape shape{12, 4, 4, 2};
  const model::GkaConfig config = make_config(shape, {{"chunk_size", 4}});
  model::TensorMap w = random_weights(config, 251);
  std::vector<at::Tensor> leaves;
  for (auto& item : w) {
    item.second = item.second.clone().requires_grad_(true);
    leaves.push_back(item.second);
  }
  model::GkaMixer mixer(config, w, kPrefix);
  const at::Tensor x = random_input(2, 11, shape.hidden, 252);
  // Recomputation accumulates into .grad (as training does), so both runs read .grad.
  auto gradients = [&](bool recompute) {
    for (at::Tensor& leaf : leaves) leaf.mutable_grad() = at::Tensor();
    auto run = [&](const at::Tensor& input) { return mixer.forward(input, nullptr); };
    const at::Tensor y = recompute ? model::recompute_in_backward(run, x) : run(x);
    y.pow(2).sum().backward();
    std::vector<at::Tensor> out;
    for (const at::Tensor& leaf : leaves) out.push_back(leaf.grad().clone());
    return out;
  };
  const auto plain = gradients(false), recomputed = gradients(true);
  for (size_t i = 0; i < plain.size(); ++i) {
    CHECK(plain[i].abs().max().item<double>() > 0.0);
    CHECK(rel_error(recomputed[i], plain[i]) <= 1e-12);
  }
}
