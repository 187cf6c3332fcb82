// kernels/common/wgmma.cuh on the GPU: each way GKA's warpgroup solve and GDN's warpgroup walk issue
// the warpgroup MMAs (A from registers or by descriptor, K-major or MN-major (the transposed A); B
// by descriptor, MN-major or K-major; 64 columns from column 0
// or from the second 64-column panel; depth 16, 64 or 128) gives the product of the bf16
// operands within fp32 accumulation's rounding of the float64 product (1e-5 relative). Random
// operands.
#include <catch2/catch.hpp>

#include <iostream>

#include "kernels/common/policy.h"
#include "kernels/gka_solve/gka_forward_bf16.h"
#include "test_helpers.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/common/wgmma_check.h"
#endif

using namespace prime;

TEST_CASE("wgmma: the warpgroup products the GKA solve and the GDN walk issue, against float64",
          "[kernels][gpu][wgmma]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
#ifdef PRIME_WITH_CUDA
  const at::Device cuda(at::kCUDA, 0);
  if (!kernels::gka_forward_wgmma_available(cuda)) return;  // not a Hopper: nothing issues these
  at::manual_seed(71);
  struct Case {
    int64_t K, W, col0;
    bool a_registers, b_mn_major, a_mn_major = false;
  };
  for (const Case& c : {Case{128, 128, 0, true, false}, Case{128, 128, 64, true, false}, Case{64, 64, 0, true, false},
                        Case{128, 128, 64, false, true}, Case{64, 64, 0, false, true}, Case{128, 128, 0, false, true},
                        Case{64, 128, 64, true, true}, Case{64, 64, 0, true, true}, Case{16, 64, 0, true, true},
                        // GDN's warpgroup walk: the scores (K-major A and B), K^T U_d (MN-major A and B)
                        Case{128, 64, 0, false, false}, Case{64, 128, 64, false, false},
                        Case{64, 128, 64, false, true, true}, Case{64, 64, 0, false, true, true},
                        Case{128, 128, 0, false, true, true}, Case{32, 64, 0, false, false, true}}) {
    INFO("K=" << c.K << " W=" << c.W << " col0=" << c.col0 << " A from "
              << (c.a_registers ? "registers" : c.a_mn_major ? "an MN-major descriptor" : "a K-major descriptor")
              << ", B " << (c.b_mn_major ? "MN" : "K") << "-major");
    const at::Tensor a = at::randn({64, c.K}, at::kFloat).to(at::kBFloat16);
    const at::Tensor b = at::randn({c.K, c.W}, at::kFloat).to(at::kBFloat16);
    const at::Tensor ours =
        kernels::wgmma_product(a.to(cuda), b.to(cuda), c.col0, c.a_registers, c.b_mn_major, c.a_mn_major);
    const at::Tensor reference = at::matmul(a.to(at::kDouble), b.to(at::kDouble).narrow(1, c.col0, 64));
    const double error = ((ours.cpu().to(at::kDouble) - reference).norm() / reference.norm()).item<double>();
    std::cout << "[kernels][wgmma] K=" << c.K << " W=" << c.W << " col0=" << c.col0 << " registers=" << c.a_registers
              << " a_mn_major=" << c.a_mn_major << " b_mn_major=" << c.b_mn_major << ": vs float64 " << error
              << std::endl;
    CHECK(error <= 1e-5);
  }
#endif
}
