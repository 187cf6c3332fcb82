// The one-warpgroup solve (gka_solve_bf16_wgmma_one.cuh) as a kernel of its own: a block of 128 threads per
// 64-step chunk at head dim 128 reads its operands (gka_solve_one.h), copies the keys and H_0 into the
// swizzled layout, runs the N iterations and writes x. 112 KB of shared memory (and up to 1 KB for alignment):
// two blocks a multiprocessor.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/policy.h"
#include "kernels/common/wgmma_device.h"
#include "kernels/gka_solve/gka_solve_bf16_wgmma_one.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"

namespace prime::kernels::detail {

namespace {

using namespace gka_bf16;
using Bf16 = __nv_bfloat16;

struct OneGroupParams {
  const Bf16 *q, *keys, *h0;                  // [M,64,128], [M,64,128], [M,128,128]
  const float *weights, *from_start, *frob;  // [M,64,64], [M,64], [M,64]
  double ridge_strength;
  int num_iter;
  float* x;  // [M,64,128]
};

constexpr size_t kSharedBytes = kOneGroupSharedBytes + 1024;  // the operands and up to 1,023 bytes of alignment

__global__ void __launch_bounds__(128, 2) gka_solve_one_kernel(const OneGroupParams p) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  const int64_t m = blockIdx.x;
  const OneGroupOperands ops(smem_bytes);
  copy_swizzled_rows<64>(ops.keys, p.keys + m * 64 * 128, 128, 64);
  copy_swizzled_rows<128>(ops.h0, p.h0 + m * 128 * 128, 128, 128);
  const Bf16* q = p.q + m * 64 * 128;
  const float* weights = p.weights + m * 64 * 64;
  OneGroupSolve solve;
  solve.start(ops, 64, p.frob + m * 64, p.from_start + m * 64, p.ridge_strength,
              [&](int row, int col) { return *reinterpret_cast<const uint32_t*>(q + row * 128 + col); },
              [&](int t, int s) { return weights[t * 64 + s]; });
  wgmma::fence_proxy_async();  // the swizzled copies seen by the MMAs
  __syncthreads();
  solve.run(ops, p.ridge_strength, p.num_iter);
  float* x = p.x + m * 64 * 128;
#pragma unroll
  for (int e = 0; e < OneGroupSolve::kAcc; e += 2)
    *reinterpret_cast<float2*>(x + wgmma::accumulator_row(e % 32) * 128 + OneGroupSolve::col_of(e)) =
        make_float2(solve.x[e], solve.x[e + 1]);
}

}  // namespace

at::Tensor launch_gka_solve_one(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& h0,
                                const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                                double ridge_strength, int num_iter) {
  const char* op = "gka_solve_one_group";
  check_operand(q, op, "q", at::kBFloat16, 3);
  const int64_t M = q.size(0);
  PRIME_CHECK(q.size(1) == 64 && q.size(2) == 128, op, ": q ", q.sizes(), " must be [M,64,128]");
  check_operand_sizes(keys, op, "keys", at::kBFloat16, {M, 64, 128});
  check_operand_sizes(h0, op, "h0", at::kBFloat16, {M, 128, 128});
  check_operand_sizes(weights, op, "weights", at::kFloat, {M, 64, 64});
  check_operand_sizes(from_start, op, "from_start", at::kFloat, {M, 64});
  check_operand_sizes(frob, op, "frob", at::kFloat, {M, 64});
  for (const at::Tensor* t : {&keys, &h0, &weights, &from_start, &frob})
    PRIME_CHECK(t->device() == q.device(), op, ": operands on different devices");
  for (const at::Tensor* t : {&q, &keys, &h0}) check_aligned(*t, op, "a bf16 operand", 16);
  PRIME_CHECK(num_iter >= 1, op, ": num_iter ", num_iter);
  PRIME_CHECK(M <= 2147483647, op, ": too many chunks");
  PRIME_CHECK(wgmma_runs_on(q.device()), op, ": needs a Hopper GPU and this build's sm_90a code");
  const at::cuda::CUDAGuard guard(q.device());
  at::Tensor x = new_output({M, 64, 128}, q.options().dtype(at::kFloat));
  if (M == 0) return x;
  OneGroupParams p{};
  p.q = reinterpret_cast<const Bf16*>(q.data_ptr());
  p.keys = reinterpret_cast<const Bf16*>(keys.data_ptr());
  p.h0 = reinterpret_cast<const Bf16*>(h0.data_ptr());
  p.weights = weights.data_ptr<float>();
  p.from_start = from_start.data_ptr<float>();
  p.frob = frob.data_ptr<float>();
  p.ridge_strength = ridge_strength;
  p.num_iter = num_iter;
  p.x = x.data_ptr<float>();
  // The largest shared-memory carveout, so that two blocks' 113 KB fit a multiprocessor.
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(gka_solve_one_kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  launch_with_shared(gka_solve_one_kernel, dim3(static_cast<unsigned>(M)), kSharedBytes, 128, p,
                     "gka_solve_one_kernel");
  return x;
}

int gka_solve_one_blocks_per_multiprocessor() {
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(gka_solve_one_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kSharedBytes)));
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(gka_solve_one_kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  int blocks = 0;
  PRIME_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, gka_solve_one_kernel, 128, kSharedBytes));
  return blocks;
}

}  // namespace prime::kernels::detail
