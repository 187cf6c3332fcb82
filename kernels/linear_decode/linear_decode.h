// y = x Wᵀ (+ bias) for a few rows of x: the weight projections of a decode step. At one to four
// tokens the product is a matrix-vector product bound by reading W once; cuBLAS runs it as
// split-K tensor-core GEMMs plus a reduction kernel, which reached ~2.8 TB/s of the H200's
// 4.8 TB/s on the 8B shape. Here each warp streams whole rows of W with 16-byte loads, many in
// flight, against every row of x at once. Several weights that share x (attention's q, k and v;
// the MLP's gate and up) go in one launch, their rows one row space; gate and up can end in the
// SwiGLU product instead of two outputs. Not autograd functions: training and prefill keep
// at::linear (the predicates say so).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace prime::kernels {

// Most rows of x the kernel serves. Each 16 bytes of W read from memory meet every row of x: 8
// multiply-adds and a 16-byte re-read of x from L1 per row. At 4 rows that is about half of a
// multiprocessor's issue rate at HBM speed and twice W's bytes through L1; beyond, those, not the
// weight stream, set the time, and the tensor-core GEMM (at::linear) is the better form.
constexpr int64_t kLinearDecodeMaxRows = 4;

// Most weights one grouped launch takes.
constexpr int64_t kLinearDecodeMaxGroup = 4;

// Whether linear_decode serves these operands: policy Auto, no gradient wanted (grad mode off, or
// no operand requires grad), CUDA autocast off (at::linear would cast under it), x a CUDA tensor
// [..., K] with 1 to 4 rows (numel / K), weight 2-D [N, K] contiguous and 16-byte aligned, x and
// weight of one dtype among bf16, fp16 and fp32 on one device, K a multiple of 8 (bf16, fp16) or 4
// (fp32), and bias undefined or 1-D [N] of that dtype on that device.
bool linear_decode_apply(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// What at::linear(x, weight, bias) returns: [..., N] in x's dtype (contiguous). Products summed in
// fp32, the bias (converted to fp32) added to the sum, one rounding to the dtype at the end, as
// cuBLAS's bf16 GEMM with a bias epilogue does (at::linear may differ by its split-K partial sums,
// which cuBLAS may reduce in bf16). Launched on the current stream without host synchronisation;
// the launch configuration depends only on the shapes (a CUDA graph may capture it).
at::Tensor linear_decode(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// linear_decode of each weight (biases empty, or one entry per weight, undefined for none) in
// one launch: {x W_0ᵀ + b_0, ...}, each [..., N_i] contiguous, each element as linear_decode
// computes it. Call only where linear_decode_apply(x, weights[i], biases[i]) holds for every i and
// 1 <= weights.size() <= kLinearDecodeMaxGroup.
std::vector<at::Tensor> linear_decode_group(const at::Tensor& x, at::TensorList weights, at::TensorList biases);

// silu(x gateᵀ) * (x upᵀ), [..., N] contiguous, in one launch (a warp owns row r of gate and row r
// of up), rounded as the torch form at::silu(at::linear(x, gate)) * at::linear(x, up) rounds: each
// projection's fp32 sum to the dtype, silu of it (fp32, x / (1 + exp(-x))) to the dtype, the
// product to the dtype. Call only where linear_decode_apply holds for (x, gate) and (x, up) and
// gate and up have one shape.
at::Tensor linear_decode_gated_silu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up);

// How the launches spread their work over the GPU. OneWave (the default): a grid of one wave (the
// blocks the multiprocessors hold at once) whose warps take units of work round robin, each warp
// the same number up to one, so no partial last wave. PerUnit: one warp per unit of work and as
// many blocks as that needs. Both compute the same values bit for bit; the benchmark times both.
enum class LinearDecodeGrid { OneWave, PerUnit };

// The grid in force: a ScopedLinearDecodeGrid's while one is alive, else OneWave.
LinearDecodeGrid linear_decode_grid();

class ScopedLinearDecodeGrid {
 public:
  explicit ScopedLinearDecodeGrid(LinearDecodeGrid grid);
  ~ScopedLinearDecodeGrid();
  ScopedLinearDecodeGrid(const ScopedLinearDecodeGrid&) = delete;
  ScopedLinearDecodeGrid& operator=(const ScopedLinearDecodeGrid&) = delete;

 private:
  int previous_;
};

}  // namespace prime::kernels
