// GKA on CUDA: the forms agree there too (the chunked core's timings are `prime-bench ssm`'s).
#include <catch2/catch.hpp>

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
