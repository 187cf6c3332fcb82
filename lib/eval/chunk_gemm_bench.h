// Timing of kernels/chunk_gemm (batched fp32 products on the 3xTF32 tensor cores) against
// at::baddbmm_out (cuBLAS's fp32 path, TF32 off) on the chunked GDN backward's product shapes, the
// same operands in one run, for prime-bench's kernel tables.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace prime::eval {

struct ChunkGemmBenchOptions {
  int64_t batch = 4096;  // chunks x heads: one 8192-token sequence of 32 heads in 64-token chunks
  int64_t chunk = 64, head_dim = 128;
  int warmup = 2, repeats = 5;
  int calls_per_repeat = 10;
};

struct ChunkGemmBenchRow {
  std::string shape, use;  // "batch x (m x k) (k x n)" with T marking a transposed operand; which product
  double flops = 0, bytes = 0;
  double kernel_ms = 0, torch_ms = 0;
  double kernel_tflops = 0, torch_tflops = 0;
};

// Needs a CUDA device and a build with the kernels (else a UserError).
std::vector<ChunkGemmBenchRow> run_chunk_gemm_bench(const ChunkGemmBenchOptions& options, const at::Device& device);

}  // namespace prime::eval
