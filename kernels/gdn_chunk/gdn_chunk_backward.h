// The backward of GDN's chunked form, written out (gradients of q, k, v, g, beta and the initial
// state from the fused forward's per-chunk results), so that training runs the fused forward
// (gdn_chunk.h, gdn_chunk_fused) and saves only what it wrote: W, U_n, K_d, the chunk decays and
// the states entering each chunk. Per 64-step chunk, with Gamma = cumsum(g), D_ij =
// e^{Gamma_i - Gamma_j} (j <= i), scores = (Q K^T) * D, A = strictly-lower(beta K K^T * D),
// T = (I + A)^-1, S_n the state entering the chunk and G_n the gradient reaching the state after
// it:
//   O = diag(e^Gamma) Q S_n + scores U_n,  U_n = T diag(beta) V - W S_n,  W = T diag(beta e^Gamma) K
//   S_{n+1} = e^{Gamma_C} S_n + K_d^T U_n,  K_d = diag(e^{Gamma_C - Gamma}) K
//   G_{n-1} = (e^Gamma Q - scores W)^T dO_n + e^{Gamma_C} G_n - W^T (K_d G_n)   (the reverse walk)
//   dU = scores^T dO + K_d G,  dW = -dU S_n^T,  dT = dU (beta V)^T + dW (beta e^Gamma K)^T,
//   dA = -T^T dT T^T (strictly lower), then the products' and the gates' chain rule; dg is the
// reverse cumulative sum of dGamma within the chunk (the decay factors' terms summed straight
// into dg: see gdn_chunk_backward.cpp). Everything but the walk and T is batched matmuls over
// [B*H, N, 64, ...] and elementwise work: on CUDA three kernels (gdn_backward_kernels.cu, one
// block per chunk), elsewhere ATen ops. Gamma's differences are taken in float64, as in the
// forward.
#pragma once

#include <ATen/ATen.h>

#include "kernels/chunk_gemm/chunk_gemm.h"

#include <functional>
#include <tuple>
#include <utility>

namespace prime::kernels {

// What the fused forward keeps for its backward. q, k, v [B,T,H,D] and g, beta [B,T,H] (the
// inputs); w, u (U_n), k_decayed [M,N,64,D], decay [M,N] = e^{Gamma_C}, states [M,N,D,D] (S_n);
// inverse [M,N,64,64] = T (from the bf16 forward: rounded to bf16, which only bf16 products take), or
// undefined (the backward then forms it with ops.inverse); M = B*H,
// N = ceil(T / 64); starts [N] bool or undefined (packed documents' first chunks). All in q's dtype
// (fp32 or float64), or, from the bf16 forward, q, k, v, w, u, k_decayed and states bf16 with the
// rest fp32: then the backward runs in fp32 on their values and every gradient is fp32. The bf16
// forward's fused walk keeps no k_decayed (undefined): the backward forms it where its split walk reads it.
struct GdnChunkSaved {
  at::Tensor q, k, v, g, beta;
  at::Tensor w, u, k_decayed, decay, states, inverse;
  at::Tensor starts;
};

// What the fused reverse walk gives: G_n per chunk [M,N,D,D] and dU [M,N,64,D] in the dtype the
// products read (CUDA: bf16, which only bf16 products read), the initial state's gradient [M,D,D]
// (fp32), and the chunk decays' gradient sum(S_n o G_n) [M,N] taken on G before any rounding, or
// undefined (the backward forms it from the states and G_n).
struct GdnFusedWalk {
  at::Tensor grads_after, d_u, d_initial, d_chunk_decay;
};

// The two sequential pieces, per device: the reverse walk (probe k_decayed, writer w, addend
// d_states [M,N,D,D], decay, initial d_final [M,D,D] or undefined, starts) giving (G_n per chunk
// [M,N,D,D], the gradient of the initial state [M,D,D]); and T = (I + A)^-1 for A [M,N,64,64]
// (used where the saved results hold no T).
struct GdnChunkBackwardOps {
  std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor& k_decayed, const at::Tensor& w,
                                                  const at::Tensor& d_states, const at::Tensor& decay,
                                                  const at::Tensor& d_final, const at::Tensor& starts)>
      reverse_walk;
  std::function<at::Tensor(const at::Tensor& A)> inverse;
  // Optional: T from K K^T [M,N,64,64], the gates and beta [M,N,64] (fp32) in one step, A formed inside
  // (CUDA: launch_gdn_backward_inverse), T of dtype `type` (fp32, or bf16 where only bf16 products read
  // it); where it is empty, A is formed in ATen ops for `inverse`.
  std::function<at::Tensor(const at::Tensor& kk, const at::Tensor& g, const at::Tensor& beta, at::ScalarType type)>
      inverse_from_gram;
  // Optional: the same from k's bf16 rows [B,H,N,64,D] (per_chunk_rows), K K^T formed inside (CUDA:
  // launch_gdn_backward_inverse_from_rows); where it is set and k qualifies (gdn_backward_key_rows_apply), the
  // backward with bf16 products on CUDA forms neither K K^T nor Q K^T as tensors (the gates kernel forms them too).
  std::function<at::Tensor(const at::Tensor& k, const at::Tensor& g, const at::Tensor& beta, at::ScalarType type)>
      inverse_from_keys;
  // Optional, for the bf16 forward's results: the walk with its addend and dU formed inside (CUDA:
  // launch_gdn_backward_walk_bf16), from the saved q, k, w, states, Gamma [M,N,64] float64, d_out
  // [B,T,H,D] (undefined: zeros), d_final [M,D,D] (or undefined) and starts (GdnFusedWalk). Where it is
  // empty the walk runs on the addend formed first (reverse_walk).
  std::function<GdnFusedWalk(const GdnChunkSaved& saved, const at::Tensor& gamma, const at::Tensor& d_out,
                             const at::Tensor& d_final)>
      fused_walk;
};

// Which walk GDN's backward from its bf16 forward takes on CUDA: PRIME_GDN_BACKWARD_WALK (read at each
// call) "split", the walk on its addend formed by batched products first; "fused", the fused reverse walk
// (launch_gdn_backward_walk_bf16: 1.35x faster fwd+bwd at (4,8192,32,128) on an H100); "auto" or unset,
// the fused walk where its block fits the GPU's shared memory and the products are bf16, else split;
// anything else a UserError.
enum class GdnBackwardWalk { Auto, Split, Fused };
GdnBackwardWalk gdn_bf16_backward_walk();

// Where the backward with bf16 products on CUDA forms its chain rule's last products after the fused reverse walk:
// PRIME_GDN_BACKWARD_SUMS (read at each call) "kernels" or unset, the value side (dW, dT, dv) and dq and dk each in
// one kernel per chunk that reads its operands once, and d_scores = dO U^T in the gates kernel, where they take
// them; "value", that kernel for the value side and the rest as chunk_gemm products; "products", every one of them
// on chunk_gemm's launches (to time the three); anything else a UserError. All three give the same bits.
enum class GdnBackwardSums { Kernels, Value, Products };
GdnBackwardSums gdn_backward_sums();

// The arithmetic of the batched products when the saved results are the bf16 forward's:
// PRIME_GDN_BACKWARD_PRODUCTS (read at each call) "bf16" or unset, bf16 operands with fp32 accumulation
// (kernels/chunk_gemm's Bf16; experiments/gdn_bf16_backward: the gradients within 1.6x their bf16
// sensitivity, 1.4x with fp32 products); "fp32", 3xTF32 (fp32 accuracy, to time the two); anything else a
// UserError. fp32 and float64 saved results always multiply in their own precision.
GemmPrecision gdn_bf16_backward_products();

struct GdnChunkGrads {
  at::Tensor q, k, v, g, beta;  // the inputs' shapes
  at::Tensor state;             // [B,H,D,D]
};

// d_out [B,T,H,D] and d_final [B,H,D,D] may be undefined (zero). qkv_grad_type: the dtype of q's, k's and
// v's gradients (undefined: the working dtype, fp32 for the bf16 forward's results); bf16 is rounded once
// as the CUDA kernels write them (the other gradients stay in the working dtype).
GdnChunkGrads gdn_chunk_backward(const GdnChunkSaved& saved, const at::Tensor& d_out, const at::Tensor& d_final,
                                 const GdnChunkBackwardOps& ops,
                                 at::ScalarType qkv_grad_type = at::ScalarType::Undefined);

}  // namespace prime::kernels
