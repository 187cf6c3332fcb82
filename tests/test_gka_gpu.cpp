// GKA on CUDA: the forms agree there too (the chunked core's timings are `prime-bench ssm`'s);
// the training path (fp32 solve, recomputing backward) against the float64 CPU reference.
#include <catch2/catch.hpp>

#include <torch/csrc/autograd/autograd.h>

#include <iostream>

#include "model/gka.h"
#include "test_helpers.h"
#include "test_gka_util.h"

using namespace prime;
using namespace prime::test_gka;

TEST_CASE("GKA forms agree on CUDA", "[gka][gpu]") {
  if (!prime::test::gpu_available_or_fail()) return;
  // cuDNN may run fp32 convs in TF32; the agreement is about the mixer's own arithmetic.
  const bool tf32 = at::globalContext().allowTF32CuDNN();
  at::globalContext().setAllowTF32CuDNN(false);
  const Shape shape{256, 64, 8, 2};
  const model::GkaConfig config = make_config(shape);
  const model::TensorMap w64 = random_weights(config, 131);
  const at::Device cuda(at::kCUDA, 0);
  model::GkaMixer gpu(config, cast_weights(w64, at::kFloat, cuda), kPrefix);
  model::GkaMixer cpu(config, cast_weights(w64, at::kFloat), kPrefix);
  const at::Tensor x = random_input(2, 300, shape.hidden, 132).to(at::kFloat);
  const at::Tensor chunked = gpu.forward(x.to(cuda), nullptr);
  const at::Tensor recurrent = gpu.forward_recurrent(x.to(cuda), nullptr);
  const double forms = rel_error(chunked, recurrent);
  const double vs_cpu = rel_error(chunked, cpu.forward_recurrent(x, nullptr));
  auto cache = gpu.make_cache(2, cuda);
  gpu.forward(x.narrow(1, 0, 299).to(cuda), cache.get());
  const double step = rel_error(gpu.step(x.narrow(1, 299, 1).to(cuda), *cache),
                                chunked.narrow(1, 299, 1));
  std::cout << "[gka][gpu] D=64 T=300 G=4: chunked vs recurrent " << forms << ", vs CPU recurrent "
            << vs_cpu << ", decode step after prefill " << step << std::endl;
  CHECK(forms <= 1e-5);
  CHECK(vs_cpu <= 1e-5);
  CHECK(step <= 1e-5);
  model::GkaMixer gpu16(config, cast_weights(w64, at::kBFloat16, cuda), kPrefix);
  const at::Tensor out16 = gpu16.forward(x.to(cuda, at::kBFloat16), nullptr);
  CHECK(out16.scalar_type() == at::kBFloat16);
  CHECK(rel_error(out16, chunked) <= 5e-2);
  at::globalContext().setAllowTF32CuDNN(tf32);
}

TEST_CASE("GKA training on CUDA: fp32-solve gradients vs float64, memory kept independent of N",
          "[gka][gpu]") {
  if (!prime::test::gpu_available_or_fail()) return;
  // The solve is the ill-conditioned part: TF32 matmuls (10-bit mantissa) would swamp it.
  const bool tf32_cublas = at::globalContext().allowTF32CuBLAS();
  const bool tf32_cudnn = at::globalContext().allowTF32CuDNN();
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  const Shape shape{256, 64, 8, 2};
  const at::Device cuda(at::kCUDA, 0);
  const int64_t B = 2, T = 300;  // T not a multiple of the chunk
  const at::Tensor x64 = random_input(B, T, shape.hidden, 142);
  at::manual_seed(143);
  const at::Tensor probe = at::randn({B, T, shape.hidden}, at::kDouble);
  // d sum(forward(x) * probe) / d (x, every weight): trained weights (they require grad).
  auto gradients = [&](const model::GkaConfig& config, const model::TensorMap& w64,
                       at::ScalarType type, at::Device device, bool recurrent) {
    model::TensorMap w = cast_weights(w64, type, device);
    std::vector<at::Tensor> leaves = {x64.to(device, type).clone().requires_grad_(true)};
    for (auto& item : w) {
      item.second = item.second.clone().requires_grad_(true);
      leaves.push_back(item.second);
    }
    model::GkaMixer mixer(config, w, kPrefix);
    CHECK(mixer.solve_dtype(device) == (device.is_cuda() ? at::kFloat : at::kDouble));
    const at::Tensor y = recurrent ? mixer.forward_recurrent(leaves[0], nullptr)
                                   : mixer.forward(leaves[0], nullptr);
    return torch::autograd::grad({(y * probe.to(device, type)).sum()}, leaves);
  };
  for (bool bp_lambda : {true, false}) {
    const model::GkaConfig config = make_config(shape, {{"bp_lambda", bp_lambda}});
    const model::TensorMap w64 = random_weights(config, 141);
    const auto gpu = gradients(config, w64, at::kFloat, cuda, false);
    const auto reference = gradients(config, w64, at::kDouble, at::kCPU, true);
    double worst = 0.0;
    for (size_t i = 0; i < gpu.size(); ++i) {
      const double error = rel_error(gpu[i], reference[i]);
      INFO("bp_lambda " << bp_lambda << " gradient " << i << ": " << error);
      CHECK(error <= 1e-2);
      worst = std::max(worst, error);
    }
    std::cout << "[gka][gpu] D=64 T=300 G=4 bp_lambda=" << bp_lambda
              << ": fp32-solve chunked gradients vs float64 CPU recurrent, worst " << worst
              << std::endl;
  }
  // What the graph keeps on the device after the forward pass does not grow with num_iter.
  auto kept = [&](int num_iter) {
    const model::GkaConfig config = make_config(shape, {{"num_iter", num_iter}});
    model::TensorMap w = cast_weights(random_weights(config, 141), at::kFloat, cuda);
    for (auto& item : w) item.second.requires_grad_(true);
    model::GkaMixer mixer(config, w, kPrefix);
    const at::Tensor x = x64.to(cuda, at::kFloat);
    auto meter = std::make_shared<AllocationMeter>(c10::DeviceType::CUDA);
    int64_t after_forward = 0;
    {
      c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, meter);
      const at::Tensor y = mixer.forward(x, nullptr);
      after_forward = meter->current;
      torch::autograd::grad({y.pow(2).sum()}, {w.at(kPrefix + "k_proj.weight")});
    }
    std::cout << "[gka][gpu] N=" << num_iter << ": device bytes kept after forward "
              << after_forward << ", peak over forward and backward " << meter->peak << std::endl;
    return after_forward;
  };
  const int64_t few = kept(4), many = kept(64);
  CHECK(few > 0);
  CHECK(many == few);
  at::globalContext().setAllowTF32CuBLAS(tf32_cublas);
  at::globalContext().setAllowTF32CuDNN(tf32_cudnn);
}
