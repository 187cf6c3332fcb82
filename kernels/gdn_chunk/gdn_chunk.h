// CUDA kernels of GDN's chunked form (lib/model/gdn_rule.cpp, gated_delta_rule_chunked): the two
// pieces the torch-ops form runs worst. Both are autograd functions, so training uses them too.
//  - unit_lower_inverse: (I + A)^-1 of each chunk's strictly lower triangular A, by forward
//    substitution in shared memory (replaces a batched triangular solve whose backward is
//    another solve).
//  - chunk_state_scan: the recurrence over chunks, which the torch form runs as a host loop of
//    small matmuls per chunk; one kernel walks all chunks with the state tile resident on chip.
// Under autograd everything that is parallel over chunks stays in batched cuBLAS matmuls around
// them. gdn_chunk_forward (below) runs the whole form in kernels where no gradient is recorded,
// gdn_chunk_fused where one is.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

namespace prime::kernels {

// Whether these kernels serve gated_delta_rule_chunked for these operands: policy Auto, a CUDA
// fp32 tensor, chunk <= 64, head dim 32, 64, 128 or 256, and the scan's block fits the device's
// shared memory (not at 256 on an A100). Otherwise the torch form runs.
bool gdn_chunk_kernels_apply(const at::Tensor& q, int64_t chunk_size);

// Whether GDN's bf16 forward can take its fused walk on the warpgroup MMAs on this device
// (PRIME_GDN_FORWARD_WALK=wgmma): head dim 128, a Hopper GPU running this build's sm_90a code.
// False in builds without the CUDA kernels.
bool gdn_bf16_wgmma_walk_runs(int64_t head_dim, const at::Device& device);

// T = (I + A)^-1 where only A's strictly lower triangle is read. A [..., C, C] fp32 CUDA,
// C <= 64. Returns T (unit lower triangular, zeros above the diagonal). Differentiable in A.
at::Tensor unit_lower_inverse(const at::Tensor& A);

// The state recurrence over chunks n = 0..N-1 from S_0 = initial (zeros if undefined):
//   U_n = u_local_n - w_n S_n,   S_{n+1} = decay_n S_n + k_decayed_n^T U_n.
// w, k_decayed [B,H,N,C,Dk]; u_local [B,H,N,C,Dv]; decay [B,H,N]; initial [B,H,Dk,Dv], all fp32
// CUDA. starts [N] bool CUDA (shared by every (batch, head)) or undefined: S_n = 0 where
// starts[n] (packed documents: a document's first chunk), whatever the chunks before it left.
// Returns (states [B,H,N,Dk,Dv] with states_n = S_n, the state entering chunk n; S_N).
// Differentiable in every input but starts.
std::pair<at::Tensor, at::Tensor> chunk_state_scan(const at::Tensor& w, const at::Tensor& k_decayed,
                                                   const at::Tensor& u_local,
                                                   const at::Tensor& decay,
                                                   const at::Tensor& initial,
                                                   const at::Tensor& starts = at::Tensor());

// The fused chunked forward for calls that record no gradient (inference, prefill, evaluation):
// policy Auto, no operand that autograd would record, all on q's CUDA device, head dims equal,
// chunk_size <= 64 (64 where chunk_starts, laid out for that chunk size, are given), and either
//  - every operand fp32, head dim in {32, 64, 128, 256} whose blocks fit the device's shared
//    memory (not 256 on an A100): products on 3xTF32 tensor cores (fp32 accuracy), or
//  - q, k, v bf16 with g, beta and the state fp32, head dim in {32, 64, 128}: products on bf16
//    tensor cores with fp32 accumulation, per-chunk intermediates in bf16, the gates, the
//    (I + A)^-1 solve and the carried state in fp32 (the usual bf16 accuracy).
// PRIME_GDN_FUSED_FORWARD=0 opts out. Otherwise the composite (or torch-ops) form runs.
bool gdn_chunk_forward_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                             const at::Tensor& beta, const at::Tensor& state, int64_t chunk_size,
                             const at::Tensor& chunk_starts);

// Whether gdn_chunk_fused serves these operands: fp32, and the conditions above other than
// autograd (any operand may record a gradient).
bool gdn_chunk_fused_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                           const at::Tensor& beta, const at::Tensor& state, int64_t chunk_size,
                           const at::Tensor& chunk_starts);

// gated_delta_rule_chunked's (output [B,T,H,D], final state [B,H,D,D]) in three kernels: a
// per-chunk prep (the (I + A)^-1 solve giving W and U', the decayed keys), the chunk-state scan
// (states entering each chunk, U_n = U' - W S_n), and a per-chunk output. Chunks of 64 steps
// whatever the caller's chunk size (the result does not depend on it). The output has q's dtype,
// the final state is fp32. No autograd.
std::pair<at::Tensor, at::Tensor> gdn_chunk_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const at::Tensor& g, const at::Tensor& beta,
                                                    const at::Tensor& state, const at::Tensor& chunk_starts);

// The same fused forward for training (fp32 only): differentiable in q, k, v, g, beta and state.
// It keeps the kernels' per-chunk results (W, U_n, K_d, the chunk decays, the states entering
// each chunk), and its backward is gdn_chunk_backward (gdn_chunk_backward.h): batched matmuls
// around the chunk-state scan walking backwards. Under autograd this replaces the composite form
// (the torch ops around unit_lower_inverse and chunk_state_scan), whose forward is ~1.8x slower
// and saves more. PRIME_GDN_FUSED_FORWARD=0 keeps the composite form.
std::pair<at::Tensor, at::Tensor> gdn_chunk_fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& g, const at::Tensor& beta,
                                                  const at::Tensor& state, const at::Tensor& chunk_starts);

// Whether gdn_chunk_fused_bf16 serves these operands: bf16 q, k, v and the bf16 conditions above, or fp32
// ones with the fp32 conditions above and head dim <= 128; autograd aside.
bool gdn_chunk_fused_bf16_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                const at::Tensor& beta, const at::Tensor& state, int64_t chunk_size,
                                const at::Tensor& chunk_starts);

// Training on the bf16 fused forward: differentiable in all six operands. q, k, v bf16, or fp32 ones
// rounded to bf16 inside (PRIME_SSM_CORE=bf16: the output then fp32, its gradient taken in fp32, and q's,
// k's and v's gradients fp32); g, beta, state fp32. The forward keeps its bf16 per-chunk results (W,
// U_n, the states entering each chunk, K_d where it takes the split walk; the chunk decays in fp32):
// less than half of what gdn_chunk_fused keeps. It walks on the warpgroup MMAs where
// PRIME_GDN_FORWARD_WALK gives that walk (it keeps them as it walks), else on the split walk. Its
// backward is gdn_chunk_backward on them in fp32 (the fp32 kernels; each chunk's (I + A)^-1 formed
// again), so the gradients carry the bf16 forward's own rounding, up to 1.6x their sensitivity to bf16
// inputs with the forward's W and U' formed from a split (I + A)^-1 (experiments/gdn_bf16_backward);
// bf16 leaves get theirs rounded to bf16. The output is in q's dtype, the final state fp32.
std::pair<at::Tensor, at::Tensor> gdn_chunk_fused_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& g, const at::Tensor& beta,
                                                       const at::Tensor& state, const at::Tensor& chunk_starts);

}  // namespace prime::kernels
