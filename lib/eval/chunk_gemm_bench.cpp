#include "eval/chunk_gemm_bench.h"

#include <ATen/core/grad_mode.h>

#include <string>

#include "eval/kernel_vs_torch.h"
#include "kernels/chunk_gemm/chunk_gemm.h"
#include "kernels/common/policy.h"
#include "util/error.h"

namespace prime::eval {

namespace {

// While alive, cuBLAS runs fp32 products in fp32 (TF32 off): the path the kernel replaces.
struct Fp32Matmuls {
  bool previous = at::globalContext().allowTF32CuBLAS();
  Fp32Matmuls() { at::globalContext().setAllowTF32CuBLAS(false); }
  ~Fp32Matmuls() { at::globalContext().setAllowTF32CuBLAS(previous); }
  Fp32Matmuls(const Fp32Matmuls&) = delete;
  Fp32Matmuls& operator=(const Fp32Matmuls&) = delete;
};

struct ProductShape {
  int64_t m, k, n;
  bool a_transposed, b_transposed;
  const char* use;
};

// [batch, rows, cols], or the transposed view of a contiguous [batch, cols, rows].
at::Tensor operand(int64_t batch, int64_t rows, int64_t cols, bool transposed, const at::TensorOptions& options) {
  return transposed ? at::randn({batch, cols, rows}, options).transpose(1, 2) : at::randn({batch, rows, cols}, options);
}

std::string dims(int64_t rows, int64_t cols, bool transposed) {
  return "(" + std::to_string(rows) + "x" + std::to_string(cols) + (transposed ? ")T" : ")");
}

}  // namespace

std::vector<ChunkGemmBenchRow> run_chunk_gemm_bench(const ChunkGemmBenchOptions& options, const at::Device& device) {
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("the chunk_gemm benchmark needs a CUDA device and a build with the CUDA kernels (PRIME_CUDA=ON)");
  at::NoGradGuard no_grad;
  const Fp32Matmuls fp32_matmuls;
  const int64_t C = options.chunk, D = options.head_dim, batch = options.batch;
  const auto fp32 = at::TensorOptions().device(device).dtype(at::kFloat);
  const ProductShape shapes[] = {
      {C, D, D, false, true, "dO S^T, U G^T, dU S^T"},
      {C, D, D, false, false, "K_d G"},
      {D, C, D, true, false, "(e^G Q - scores W)^T dO"},
      {C, D, C, false, true, "Q K^T, dO U^T, dU V^T"},
      {C, C, D, true, false, "T^T dU, scores^T dO, dA^T Q"},
  };
  std::vector<ChunkGemmBenchRow> rows;
  for (const ProductShape& s : shapes) {
    const at::Tensor a = operand(batch, s.m, s.k, s.a_transposed, fp32);
    const at::Tensor b = operand(batch, s.k, s.n, s.b_transposed, fp32);
    at::Tensor out = at::empty({batch, s.m, s.n}, fp32);
    PRIME_CHECK(kernels::chunk_gemm_apply(out, a, b), "chunk_gemm benchmark: the kernel does not serve ", a.sizes(),
                " x ", b.sizes());
    ChunkGemmBenchRow row;
    row.shape = std::to_string(batch) + " x " + dims(s.m, s.k, s.a_transposed) + dims(s.k, s.n, s.b_transposed);
    row.use = s.use;
    row.flops = 2.0 * static_cast<double>(batch * s.m * s.k * s.n);
    row.bytes = 4.0 * static_cast<double>(batch * (s.m * s.k + s.k * s.n + s.m * s.n));
    const KernelVsTorch times = time_kernel_vs_torch([&] { kernels::chunk_gemm(out, a, b, 1.0, 0.0); }, row.bytes,
                                                     options.calls_per_repeat, options.warmup, options.repeats, device);
    row.kernel_ms = times.kernel_ms;
    row.torch_ms = times.torch_ms;
    row.kernel_tflops = row.flops / (row.kernel_ms * 1e-3) / 1e12;
    row.torch_tflops = row.flops / (row.torch_ms * 1e-3) / 1e12;
    rows.push_back(row);
  }
  return rows;
}

}  // namespace prime::eval
