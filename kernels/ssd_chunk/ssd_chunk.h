// CUDA kernels of Mamba-2's chunked SSD scan (lib/model/mamba2_ssd.cpp, ssd_chunked), forward
// and backward, fp32. With Gamma_t the chunk-local cumulative sum of delta*A:
//   y_t = e^{Gamma_t} C_t h0^T + sum_{j<=t} e^{Gamma_t - Gamma_j} (C_t.B_j) delta_j x_j
//   h_end = e^{Gamma_end} h0 + sum_t delta_t e^{Gamma_end - Gamma_t} x_t B_t^T
// per chunk, h0 the state entering it. The kernels use their own chunk length (64 steps)
// whatever chunk length the caller asked for: the result does not depend on it (up to
// rounding). The op is an autograd function, so training uses the kernels too.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace prime::kernels {

// Whether the kernels serve ssd_chunked for these operands: policy Auto, CUDA fp32 tensors on
// one device, x [B,T,H,P], delta [B,T,H], A [H], Bm and Cm [B,T,H,N] (any strides: expanded
// heads with stride 0 included), state [B,H,P,N] or undefined, T >= 1, 1 <= P, N <= 128.
// Otherwise the torch-ops form runs.
bool ssd_chunk_kernels_apply(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                             const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state);

// The kernels' chunk length: restart flags come one per this many steps.
constexpr int64_t kSsdKernelChunk = 64;

// ssd_chunked's (y [B,T,H,P], final state [B,H,P,N]) from the kernels; state undefined means
// zeros. restart [ceil(T/64)] bool (packed documents) or undefined: a 64-step chunk flagged true
// starts from a zero state in every row, as if its steps began a new sequence. Differentiable in
// x, delta, A, Bm, Cm and state.
std::pair<at::Tensor, at::Tensor> ssd_chunked(const at::Tensor& x, const at::Tensor& delta,
                                              const at::Tensor& A, const at::Tensor& Bm,
                                              const at::Tensor& Cm, const at::Tensor& state,
                                              const at::Tensor& restart = at::Tensor());

// The bf16 form (prefill, evaluation, and training where asked: PRIME_SSM_CORE=bf16): policy
// Auto; x, Bm, Cm [B,T,H,D] all bf16 or all fp32 (cast to bf16), any strides; P = N = D in
// {32, 64, 128}; delta fp32 [B,T,H], A fp32 [H], state fp32 [B,H,D,D] or undefined; one CUDA
// device; T >= 1, B*H and the 64-step chunk count <= 65535.
bool ssd_chunk_bf16_apply(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                          const at::Tensor& Cm, const at::Tensor& state);

// ssd_chunked's (y [B,T,H,D] in out_type, fp32 or bf16; final state fp32 [B,H,D,D]) on bf16
// tensor cores with fp32 accumulation: the walk over chunks carries the state in fp32 and writes
// the state entering each chunk in bf16, then a per-chunk output (the usual bf16 accuracy: x, B,
// C, the chunk matrix and those states rounded to bf16). restart as ssd_chunked's.
// Differentiable in x, delta, A, Bm, Cm and state (the gradients of x, Bm, Cm in their dtype):
// the backward reads dy in bf16 (an fp32 dy is rounded), walks the chunks in reverse for the
// gradient of each chunk's end state (bf16), then forms every gradient per chunk on the same
// tensor cores; it keeps the forward's bf16 copies of x, Bm, Cm and its states entering each
// chunk ([B*H, nC, D, D] bf16).
std::pair<at::Tensor, at::Tensor> ssd_chunked_bf16(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                                                   const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state,
                                                   const at::Tensor& restart, at::ScalarType out_type);

// The walk over chunks between ssd_chunked's products, also the kernel of lib/model's generic
// chunk-start scan (model::chunks::state_scan: GKA's two states, the torch form of the SSD scan).
// In place over buffer [M, n, E] (M = B*H rows, n chunks, E state elements), c = 0..n-1, or
// n-1..0 when reverse:
//   value = buffer[m, c]; buffer[m, c] = s; s = decay[m, c] s + value
// from s = initial [M, E] (zeros when undefined); final_state [M, E] receives the last s. restart
// [n] bool (or undefined), the same for every row: a flagged chunk starts from a zero state
// (forwards s = 0 before buffer[m, c] = s; backwards s = 0 after the step). One thread per state
// element walks every chunk: one launch, where a host loop takes one or two per chunk.
// chunk_state_walk_apply: policy Auto, contiguous fp32 CUDA buffer [M, n, E] with n >= 1,
// 1 <= M <= 65535, 1 <= E < 2^30.
bool chunk_state_walk_apply(const at::Tensor& buffer);
void chunk_state_walk(const at::Tensor& buffer, const at::Tensor& decay, const at::Tensor& initial,
                      const at::Tensor& restart, bool reverse, const at::Tensor& final_state);

}  // namespace prime::kernels
