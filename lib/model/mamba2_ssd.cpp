// The SSD scan core of Mamba-2 in its three forms: chunked (quadratic within a chunk, states
// passed between chunks), the per-token recurrence, and the single step it is built from.
#include "model/mamba2.h"

#include <algorithm>

#include "kernels/common/policy.h"
#include "kernels/ssd_chunk/ssd_chunk.h"
#include "kernels/ssm_decode/ssm_decode.h"

#include "model/ssm_chunks.h"
#include "util/error.h"

namespace prime::model {

std::pair<at::Tensor, at::Tensor> ssd_step(const at::Tensor& x, const at::Tensor& delta,
                                           const at::Tensor& A, const at::Tensor& Bm,
                                           const at::Tensor& Cm, const at::Tensor& state) {
  const at::Tensor decay = at::exp(delta * A).unsqueeze(-1).unsqueeze(-1);  // [B,H,1,1]
  const at::Tensor next =
      decay * state + (delta.unsqueeze(-1) * x).unsqueeze(-1) * Bm.unsqueeze(-2);
  const at::Tensor y = at::matmul(next, Cm.unsqueeze(-1)).squeeze(-1);  // h C  [B,H,P]
  return {y, next};
}

at::Tensor ssd_step_in_place(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                             const at::Tensor& Bm, const at::Tensor& Cm, at::Tensor& state) {
  // On CUDA one fused kernel reads and writes the state once (kernels/ssm_decode).
  if (kernels::mamba2_decode_apply(x, delta, A, Bm, Cm, state))
    return kernels::mamba2_decode_step(x, delta, A, Bm, Cm, state);
  PRIME_CHECK(state.is_contiguous() && state.scalar_type() == x.scalar_type() && !state.requires_grad());
  const int64_t batch = state.size(0), heads = state.size(1), P = state.size(2), N = state.size(3);
  state.mul_(at::exp(delta * A).view({batch, heads, 1, 1}));
  at::Tensor flat = state.view({batch * heads, P, N});
  flat.baddbmm_((delta.unsqueeze(-1) * x).reshape({batch * heads, P, 1}), Bm.reshape({batch * heads, 1, N}));
  return at::bmm(flat, Cm.reshape({batch * heads, N, 1})).view({batch, heads, P});  // h C
}

std::pair<at::Tensor, at::Tensor> ssd_recurrent(const at::Tensor& x, const at::Tensor& delta,
                                                const at::Tensor& A, const at::Tensor& Bm,
                                                const at::Tensor& Cm, const at::Tensor& state) {
  const int64_t batch = x.size(0), length = x.size(1), heads = x.size(2), dim = x.size(3);
  at::Tensor h = state.defined() ? state : at::zeros({batch, heads, dim, Bm.size(3)}, x.options());
  std::vector<at::Tensor> outputs;
  outputs.reserve(length);
  for (int64_t t = 0; t < length; ++t) {
    auto [y, next] = ssd_step(x.select(1, t), delta.select(1, t), A, Bm.select(1, t),
                              Cm.select(1, t), h);
    outputs.push_back(y);
    h = next;
  }
  at::Tensor y = length ? at::stack(outputs, 1) : at::empty({batch, 0, heads, dim}, x.options());
  return {y, h};
}

// Within a chunk with chunk-start state h0 and Gamma_t = sum_{s<=t} delta_s A (chunk-local):
// y_t = e^Gamma_t h0 C_t + sum_{j<=t} e^(Gamma_t - Gamma_j) (C_t.B_j) delta_j x_j, i.e.
// Y = diag(e^Gamma) C h0^T + (C B^T * decay) diag(delta) X, and the chunk's own contribution to
// the end state is X^T diag(delta e^(Gamma_C - Gamma)) B. Everything but the chain
// h_n = e^Gamma_C h_{n-1} + local_n (elementwise, cheap) runs in parallel over chunks.
std::pair<at::Tensor, at::Tensor> ssd_chunked(const at::Tensor& x, const at::Tensor& delta,
                                              const at::Tensor& A, const at::Tensor& Bm,
                                              const at::Tensor& Cm, const at::Tensor& state,
                                              int64_t chunk_size, const at::Tensor& chunk_starts) {
  PRIME_CHECK(x.dim() == 4 && delta.dim() == 3 && Bm.dim() == 4 && Cm.sizes() == Bm.sizes());
  PRIME_CHECK(chunk_size > 0);
  const int64_t batch = x.size(0), length = x.size(1), heads = x.size(2), dim = x.size(3);
  PRIME_CHECK(!chunk_starts.defined() || (length % chunk_size == 0 && chunk_starts.dim() == 1 &&
                                          chunk_starts.size(0) == length / chunk_size &&
                                          chunk_starts.scalar_type() == at::kBool),
              "SSD chunked form: chunk_starts must be [", length / chunk_size, "] bool for ", length,
              " steps in chunks of ", chunk_size);
  // On CUDA the kernels run the scan in their own 64-step chunks whatever chunk_size is: the
  // result does not depend on the chunk length, up to rounding (kernels/ssd_chunk). With restarts,
  // chunk_size must be a multiple of theirs (each restart lands on a chunk of theirs).
  if (!chunk_starts.defined() || chunk_size % kernels::kSsdKernelChunk == 0) {
    const auto restart = [&] {
      if (!chunk_starts.defined()) return at::Tensor();
      const int64_t per_chunk = chunk_size / kernels::kSsdKernelChunk;
      at::Tensor flags = at::zeros({chunk_starts.size(0), per_chunk}, chunk_starts.options());
      flags.select(1, 0).copy_(chunk_starts);
      return flags.view({-1});
    };
    // bf16 x, Bm, Cm (or fp32 ones under PRIME_SSM_CORE=bf16) take the bf16 form, forward and
    // backward; y has x's dtype.
    if (kernels::ssd_chunk_bf16_apply(x, delta, A, Bm, Cm, state) &&
        (x.scalar_type() == at::kBFloat16 || kernels::bf16_ssm_core()))
      return kernels::ssd_chunked_bf16(x, delta, A, Bm, Cm, state, restart(), x.scalar_type());
    if (kernels::ssd_chunk_kernels_apply(x, delta, A, Bm, Cm, state))
      return kernels::ssd_chunked(x, delta, A, Bm, Cm, state, restart());
  }
  at::Tensor h = state.defined() ? state : at::zeros({batch, heads, dim, Bm.size(3)}, x.options());
  if (length == 0) return {at::empty({batch, 0, heads, dim}, x.options()), h};
  // Zero padding is harmless: delta = 0 means no decay and no input.
  const at::Tensor xc = chunks::split(x * delta.unsqueeze(-1), chunk_size);  // delta x [B,H,N,C,P]
  const at::Tensor bc = chunks::split(Bm, chunk_size);                      // [B,H,N,C,N]
  const at::Tensor cc = chunks::split(Cm, chunk_size);
  const at::Tensor log_decay = chunks::split(delta * A, chunk_size);  // [B,H,N,C]
  const at::Tensor gamma = at::cumsum(log_decay, -1);

  const at::Tensor scores =
      at::matmul(cc, bc.transpose(-1, -2)) * chunks::segment_decay(log_decay);
  const at::Tensor y_local = at::matmul(scores, xc);
  const at::Tensor gamma_end = gamma.narrow(-1, chunk_size - 1, 1);  // [B,H,N,1]
  // [B,H,N,P,N]: each chunk's end state when it starts from zero.
  const at::Tensor to_end = at::exp(chunks::suffix_sum(log_decay)).unsqueeze(-1);
  const at::Tensor local_state = at::matmul((xc * to_end).transpose(-1, -2), bc);
  // The state entering each chunk [B,H,N,P,N] (zero at a flagged chunk), and the final state.
  const at::Tensor keep = chunk_starts.defined() ? chunk_starts.logical_not().to(x.scalar_type()) : at::Tensor();
  const auto [starts, final_state] = chunks::state_scan(h, local_state, at::exp(gamma_end).squeeze(-1), keep);
  // diag(e^Gamma) C h0^T
  const at::Tensor y_state =
      at::exp(gamma).unsqueeze(-1) * at::matmul(cc, starts.transpose(-1, -2));
  return {chunks::merge(y_local + y_state, length), final_state};
}

at::Tensor ssd_varlen(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                      const at::Tensor& Cm, const Documents& documents, int64_t chunk_size) {
  PRIME_CHECK(x.dim() == 4 && x.size(0) == documents.batch && x.size(1) == documents.steps,
              "SSD packed documents: x ", x.sizes(), " for documents of ", documents.batch, " x ", documents.steps);
  // Chunks of at most the kernels' 64 steps: a document pads to a multiple of 64, not of the
  // model's (longer) chunk, and the kernels serve the layout.
  const int64_t chunk = std::min(chunk_size, kernels::kSsdKernelChunk);
  const DocumentChunks& layout = documents.chunks(chunk);
  const auto to_chunks = [&](const at::Tensor& t) { return to_document_chunks(t, layout); };
  const at::Tensor y = ssd_chunked(to_chunks(x), to_chunks(delta), A, to_chunks(Bm), to_chunks(Cm), at::Tensor(),
                                   chunk, layout.starts)
                           .first;
  return from_document_chunks(y, layout, x.size(0), x.size(1));
}

}  // namespace prime::model
