// CUDA kernel of GKA's chunked Chebyshev solve (lib/model/gka_solve.cpp, chunk_solve): for every
// position t of every chunk, N iterations of
//   x' = omega (x - eta ((H_t + lambda) x - q)) + (1 - omega) x_prev,
//   H_t x = e^{G_t} H_0 x + sum_{j<=t} w_tj k_j (k_j . x),  lambda = r ||H_t||_F,
// exactly as model::gka_detail::chebyshev_iterate runs it with torch ops (30 iterations of three
// batched matmuls and several full passes over [B,H,n,C,D] tensors each). Here one block per
// chunk keeps the iterate, the keys, H_0 and W on chip for all N iterations, with the matmuls on
// the tensor cores at fp32 accuracy (3xTF32). Not an autograd function: model::ChunkSolve (whose
// backward is written out) calls it for its forward and for the iterates its backward needs.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// Whether gka_chunk_solve serves this solve: policy Auto, q a CUDA fp32 tensor [..., C, D] with
// C <= 64 and D a multiple of 16 up to 128, whose block fits the device's shared memory (every
// such shape on an H100/H200). Otherwise the torch-ops iteration runs.
bool gka_chunk_solve_apply(const at::Tensor& q);

// How the solve's products (X K^T, X H_0, P K) run on the tensor cores; the iterate and the
// Chebyshev update are fp32 in every case.
//   Tf32x3: three TF32 MMAs per step (3xTF32), fp32 accuracy; the default.
//   Bf16x3: three bf16 MMAs per step on hi + lo parts of every operand (16-bit significands): x
//           ~1e-5 of float64 after 30 iterations, ~10x fp32's error, inside the fp32 bound, at twice
//           the TF32 rate; the norm's gradient, 50x as sensitive to the iterates, lands near that
//           bound (experiments/gka_sweep_split). D a multiple of 32; other head dims take Tf32x3.
//   Bf16:   the bf16 form: the keys and H_0 rounded to bf16, X split for X K^T (two bf16 MMAs
//           per step), one MMA per step for X H_0 and P K; the layer's output within ~2.5x its
//           sensitivity to bf16 inputs (one MMA for X K^T too would leave it at ~5x:
//           experiments/gka_bf16_forward). D as Bf16x3; other head dims take Tf32x3.
enum class SolveProducts { Tf32x3, Bf16x3, Bf16 };

// PRIME_GKA_SOLVE_PRODUCTS: the products of the fp32 solve's forward, "tf32x3" (unset: the default) or
// "bf16x3" (model::ChunkSolve's backward recomputes its iterates on Tf32x3 either way); any other
// value is a UserError naming the variable. Read at each call.
SolveProducts gka_fp32_solve_products();

// PRIME_GKA_BACKWARD_PRODUCTS: the products of the reverse sweep kernel (gka_chunk_solve_backward),
// "tf32x3" (unset: the default) or "bf16x3" (twice the TF32 rate, 1.08x fwd+bwd on an H100; the kernel's
// tests within 1.4e-5 of float64, but the whole-hybrid fp32 test's GKA gradients ~50x worse than on
// 3xTF32: kernels/README.md, gka_solve v9; D a multiple of 32, other head dims take Tf32x3); any other
// value is a UserError naming the variable.
// Read at each call.
SolveProducts gka_backward_products();

// How gka_chunk_solve lays out the iterates it returns: [num_iter, ..., C, D] (IterationMajor: what
// gka_chunk_solve_backward reads) or [..., num_iter, C, D] (ChunkMajor: a chunk's N C rows in a row,
// what gka_chunk_adjoint_recurrence and the stacked gradient products read).
enum class IterateLayout { IterationMajor, ChunkMajor };

// x after num_iter (>= 1) iterations for q [..., C, D]; keys like q, start [..., D, D], weights
// [..., C, C], from_start and frob [..., C, 1], all fp32 on q's device and broadcastable to q's
// leading dims. With `iterates`, it also receives [num_iter, ..., C, D]: the x each iteration
// starts from (the first is eta q), as chebyshev_iterate's `iterates`.
at::Tensor gka_chunk_solve(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                           const at::Tensor& weights, const at::Tensor& from_start,
                           const at::Tensor& frob, double ridge_strength, int num_iter,
                           at::Tensor* iterates = nullptr, SolveProducts products = SolveProducts::Tf32x3,
                           IterateLayout layout = IterateLayout::IterationMajor);

// The gradients of gka_chunk_solve's six operands, per chunk: q and keys [..., C, D], start
// [..., D, D], weights [..., C, C], from_start and frob [..., C, 1], with q's leading dims (an
// operand broadcast in the forward takes its gradient summed back to its own shape: at::sum_to).
struct GkaSolveGradients {
  at::Tensor q, keys, start, weights, from_start, frob;
};

// Whether gka_chunk_solve_backward serves this solve: gka_chunk_solve_apply(q) and a block for
// num_iter iterations fits the device's shared memory (every served shape on an H100/H200).
bool gka_chunk_solve_backward_apply(const at::Tensor& q, int num_iter);

// Whether model::ChunkSolve's backward takes the backward kernel: yes unless
// PRIME_GKA_BACKWARD_KERNEL is "0" (read at each call; "0" keeps the torch-ops sweep, the
// reference). Each k-step's tensor-core products are summed into the gradients in fp32 on the
// CUDA cores: letting the tensor cores accumulate the running sums (which truncate) left the GKA
// layer's key-side gradients ~10x further from float64 than the torch-ops sweep in the
// whole-hybrid training test; kernels/README.md (gka_solve) has the measurements.
bool gka_chunk_solve_backward_enabled();

// The reverse sweep of the solve (the backward of model::gka_detail::chunk_solve, whose comment
// states the math) on chip, one block per chunk: the gradients of x = gka_chunk_solve(...) for
// the upstream gradient `grad` (like q), given the solve's `iterates` [num_iter, ..., C, D] as
// gka_chunk_solve returns them; its products in `products`' arithmetic (Tf32x3 or Bf16x3).
GkaSolveGradients gka_chunk_solve_backward(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                           const at::Tensor& weights, const at::Tensor& from_start,
                                           const at::Tensor& frob, double ridge_strength, int num_iter,
                                           const at::Tensor& iterates, const at::Tensor& grad,
                                           SolveProducts products = SolveProducts::Tf32x3);

// The reverse sweep's adjoint recurrence alone (model::ChunkSolve under PRIME_GKA_SWEEP=split, which
// forms the gradients of the keys, H_0 and the weights afterwards from the stacked adjoints): for the
// upstream gradient `grad` and the solve's `iterates` (ChunkMajor, [..., N, C, D]), `adjoints` [..., N, C, D] holds
// U_i = -omega_i eta A_{i+1} for i = 1..N (A_{i+1} the adjoint of y_{i+1}; chunk-major: a chunk's
// N C rows in a row), and q, from_start and frob their gradients, as gka_chunk_solve_backward
// gives them (the same arithmetic, bit for bit).
struct GkaAdjoints {
  at::Tensor adjoints, q, from_start, frob;
};

// Whether gka_chunk_adjoint_recurrence serves this solve: gka_chunk_solve_apply(q), D a multiple of
// 32, and a block for num_iter iterations fits the device's shared memory.
bool gka_chunk_adjoint_apply(const at::Tensor& q, int num_iter);

GkaAdjoints gka_chunk_adjoint_recurrence(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                         const at::Tensor& weights, const at::Tensor& from_start,
                                         const at::Tensor& frob, double ridge_strength, int num_iter,
                                         const at::Tensor& iterates, const at::Tensor& grad);

}  // namespace prime::kernels
