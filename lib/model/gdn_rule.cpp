// The gated delta rule core of GDN in its three forms: chunked (WY/UT representation), the
// per-token recurrence, and the single step the recurrence is built from.
#include "model/gdn.h"

#include "kernels/common/policy.h"
#include "kernels/gdn_chunk/gdn_chunk.h"
#include "kernels/ssm_decode/ssm_decode.h"
#include "model/ssm_chunks.h"
#include "util/error.h"

namespace prime::model {

std::pair<at::Tensor, at::Tensor> gated_delta_rule_step(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v, const at::Tensor& g,
                                                        const at::Tensor& beta,
                                                        const at::Tensor& state) {
  // state [B,H,Dk,Dv]; vectors as rows so that S^T k = (k^T S)^T.
  at::Tensor decayed = state * at::exp(g).unsqueeze(-1).unsqueeze(-1);
  at::Tensor predicted = at::matmul(k.unsqueeze(-2), decayed).squeeze(-2);  // S^T k  [B,H,Dv]
  at::Tensor u = beta.unsqueeze(-1) * (v - predicted);
  at::Tensor next = decayed + k.unsqueeze(-1) * u.unsqueeze(-2);
  at::Tensor o = at::matmul(q.unsqueeze(-2), next).squeeze(-2);
  return {o, next};
}

at::Tensor gated_delta_rule_step_in_place(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& g,
                                          const at::Tensor& beta, at::Tensor& state) {
  // On CUDA one fused kernel reads and writes the state once (kernels/ssm_decode).
  if (kernels::gdn_decode_apply(q, k, v, g, beta, state))
    return kernels::gdn_decode_step(q, k, v, g, beta, state);
  PRIME_CHECK(state.is_contiguous() && state.scalar_type() == q.scalar_type() && !state.requires_grad());
  const int64_t batch_heads = state.size(0) * state.size(1), Dk = state.size(2), Dv = state.size(3);
  state.mul_(at::exp(g).view({state.size(0), state.size(1), 1, 1}));  // decayed, in place
  at::Tensor flat = state.view({batch_heads, Dk, Dv});
  const at::Tensor predicted = at::bmm(k.reshape({batch_heads, 1, Dk}), flat);  // S^T k
  const at::Tensor u = beta.reshape({batch_heads, 1, 1}) * (v.reshape({batch_heads, 1, Dv}) - predicted);
  flat.baddbmm_(k.reshape({batch_heads, Dk, 1}), u);  // S += k u^T
  return at::bmm(q.reshape({batch_heads, 1, Dk}), flat).view({state.size(0), state.size(1), Dv});
}

std::pair<at::Tensor, at::Tensor> gated_delta_rule_recurrent(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, const at::Tensor& state) {
  const int64_t batch = q.size(0), length = q.size(1), heads = q.size(2), dim = q.size(3);
  at::Tensor S = state.defined() ? state : at::zeros({batch, heads, dim, dim}, q.options());
  std::vector<at::Tensor> outputs;
  outputs.reserve(length);
  for (int64_t t = 0; t < length; ++t) {
    auto [o, next] = gated_delta_rule_step(q.select(1, t), k.select(1, t), v.select(1, t),
                                           g.select(1, t), beta.select(1, t), S);
    outputs.push_back(o);
    S = next;
  }
  at::Tensor o = length ? at::stack(outputs, 1) : at::empty({batch, 0, heads, dim}, q.options());
  return {o, S};
}

// Within a chunk with chunk-start state S0 and Gamma_t = sum_{s<=t} g_s (chunk-local), unrolling
// the recurrence gives u_t = beta_t (v_t - e^Gamma_t S0^T k_t - sum_{j<t} e^(Gamma_t-Gamma_j)
// (k_t.k_j) u_j), i.e. (I + A) U = diag(beta) V - diag(beta e^Gamma) K S0 with
// A = strictly-lower(beta K K^T * decay). One triangular solve per chunk gives
// U' = (I+A)^-1 diag(beta) V and W = (I+A)^-1 diag(beta e^Gamma) K, so U = U' - W S0. Then
// O = diag(e^Gamma) Q S0 + (Q K^T * decay_incl) U and S_end = e^Gamma_C S0 + K_d^T U with
// K_d = diag(e^(Gamma_C - Gamma)) K. All exponents are <= 0, so nothing overflows. Only the
// three small matmuls per chunk that involve S0 run sequentially.
std::pair<at::Tensor, at::Tensor> gated_delta_rule_chunked(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& g,
                                                           const at::Tensor& beta,
                                                           const at::Tensor& state,
                                                           int64_t chunk_size,
                                                           const at::Tensor& chunk_starts) {
  PRIME_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes());
  PRIME_CHECK(g.dim() == 3 && beta.sizes() == g.sizes() && chunk_size > 0);
  // Without a gradient to record, kernels/gdn_chunk's fused forward runs the whole form.
  if (kernels::gdn_chunk_forward_apply(q, k, v, g, beta, state, chunk_size, chunk_starts)) {
    if (q.scalar_type() == at::kFloat && kernels::bf16_ssm_core()) {  // PRIME_SSM_CORE=bf16
      const at::Tensor q16 = q.to(at::kBFloat16), k16 = k.to(at::kBFloat16), v16 = v.to(at::kBFloat16);
      if (kernels::gdn_chunk_forward_apply(q16, k16, v16, g, beta, state, chunk_size, chunk_starts)) {
        auto [o, final_state] = kernels::gdn_chunk_forward(q16, k16, v16, g, beta, state, chunk_starts);
        return {o.to(at::kFloat), final_state};
      }
    }
    return kernels::gdn_chunk_forward(q, k, v, g, beta, state, chunk_starts);
  }
  const int64_t batch = q.size(0), length = q.size(1), heads = q.size(2), dim = q.size(3);
  if (length == 0) {
    at::Tensor S = state.defined() ? state : at::zeros({batch, heads, dim, dim}, q.options());
    return {at::empty({batch, 0, heads, dim}, q.options()), S};
  }
  // Training on CUDA: the same fused forward, with a written-out backward; fp32, or with PRIME_SSM_CORE=bf16
  // the bf16 forward (q, k, v rounded to bf16 inside, the output and the gradients fp32; the backward in
  // fp32 on the bf16 forward's results). bf16 q, k, v take the bf16 forward.
  if (kernels::gdn_chunk_fused_apply(q, k, v, g, beta, state, chunk_size, chunk_starts)) {
    if (kernels::bf16_ssm_core() && kernels::gdn_chunk_fused_bf16_apply(q, k, v, g, beta, state, chunk_size, chunk_starts))
      return kernels::gdn_chunk_fused_bf16(q, k, v, g, beta, state, chunk_starts);
    return kernels::gdn_chunk_fused(q, k, v, g, beta, state, chunk_starts);
  }
  if (kernels::gdn_chunk_fused_bf16_apply(q, k, v, g, beta, state, chunk_size, chunk_starts))
    return kernels::gdn_chunk_fused_bf16(q, k, v, g, beta, state, chunk_starts);
  // Otherwise on CUDA (fp32, chunk <= 64, head dim 32..256) kernels/gdn_chunk takes the triangular
  // solve and the loop over chunks; the batched matmuls around them are the same.
  const bool use_kernels = kernels::gdn_chunk_kernels_apply(q, chunk_size);
  // Zero padding is harmless: beta = 0 and k = 0 leave the state alone, g = 0 does not decay it.
  // On the kernels' path q, k and v are laid out per chunk once ([B,H,N,C,D] contiguous): every
  // product and scaling below would otherwise read [B,T,H,D] through strides (cuBLAS copying each
  // operand first, the elementwise ops unvectorised), forward and backward.
  const auto split = [&](const at::Tensor& x) {
    at::Tensor chunked = chunks::split(x, chunk_size);
    return use_kernels ? chunked.contiguous() : chunked;
  };
  const at::Tensor qc = split(q), kc = split(k), vc = split(v);
  const at::Tensor gc = chunks::split(g, chunk_size);  // [B,H,N,C]
  const at::Tensor bc = chunks::split(beta, chunk_size);
  const int64_t num_chunks = gc.size(2);
  PRIME_CHECK(!chunk_starts.defined() || (chunk_starts.dim() == 1 && chunk_starts.size(0) == num_chunks &&
                                          chunk_starts.scalar_type() == at::kBool),
              "gated_delta_rule_chunked: chunk_starts must be [", num_chunks, "] bool");

  const at::Tensor gamma = at::cumsum(gc, -1);
  const at::Tensor decay_incl = chunks::segment_decay(gc);
  const at::Tensor decay_strict = decay_incl.tril(-1);

  const at::Tensor kt = kc.transpose(-1, -2);
  const at::Tensor A = bc.unsqueeze(-1) * at::matmul(kc, kt) * decay_strict;
  const at::Tensor v_in = bc.unsqueeze(-1) * vc, k_in = (bc * at::exp(gamma)).unsqueeze(-1) * kc;
  at::Tensor u_local, w;  // U', W
  if (use_kernels) {
    // Two products with the inverse, not one with [v_in k_in] then narrowed: no concatenated
    // copy, no full-size zero-filled gradient per narrowed half in the backward, and U' and W
    // reach the scan (which saves them) contiguous, not as copies of the narrowed views.
    const at::Tensor inverse = kernels::unit_lower_inverse(A);
    u_local = at::matmul(inverse, v_in);
    w = at::matmul(inverse, k_in);
  } else {
    const at::Tensor solved =
        at::linalg_solve_triangular(A + at::eye(chunk_size, q.options()), at::cat({v_in, k_in}, -1),
                                    /*upper=*/false, /*left=*/true, /*unitriangular=*/true);
    u_local = solved.narrow(-1, 0, dim);
    w = solved.narrow(-1, dim, dim);
  }
  const at::Tensor scores = at::matmul(qc, kt) * decay_incl;
  const at::Tensor out_local = at::matmul(scores, u_local);
  // O = diag(e^Gamma) Q S0 + scores (U' - W S0) = out_local + (Q e^Gamma - scores W) S0.
  const at::Tensor q_state = qc * at::exp(gamma).unsqueeze(-1) - at::matmul(scores, w);
  const at::Tensor gamma_end = gamma.narrow(-1, chunk_size - 1, 1);  // [B,H,N,1]
  const at::Tensor k_decayed = kc * at::exp(chunks::suffix_sum(gc)).unsqueeze(-1);
  if (use_kernels) {
    auto [states, final_state] = kernels::chunk_state_scan(
        w, k_decayed, u_local, at::exp(gamma_end).squeeze(-1), state, chunk_starts);
    return {chunks::merge(out_local + at::matmul(q_state, states), length), final_state};
  }
  const at::Tensor k_decayed_t = k_decayed.transpose(-1, -2);
  const at::Tensor chunk_decay = at::exp(gamma_end).unsqueeze(-1);  // [B,H,N,1,1]

  at::Tensor S = state.defined() ? state : at::zeros({batch, heads, dim, dim}, q.options());
  // A reset multiplies the state by 0 (flags stay on the device: no host sync per chunk).
  const at::Tensor keep = chunk_starts.defined() ? chunk_starts.logical_not().to(q.scalar_type()) : at::Tensor();
  // Per-chunk views by unbind, not select: autograd gives each select its own full-size zero
  // gradient (n chunks: n passes over the whole tensor), one unbind a single stack.
  const std::vector<at::Tensor> out_local_n = out_local.unbind(2), q_state_n = q_state.unbind(2),
                                u_local_n = u_local.unbind(2), w_n = w.unbind(2), k_n = k_decayed_t.unbind(2),
                                decay_n = chunk_decay.unbind(2);
  std::vector<at::Tensor> outputs;
  outputs.reserve(num_chunks);
  for (int64_t n = 0; n < num_chunks; ++n) {
    if (keep.defined()) S = S * keep.select(0, n);
    outputs.push_back(out_local_n[n] + at::matmul(q_state_n[n], S));
    at::Tensor u = u_local_n[n] - at::matmul(w_n[n], S);
    S = decay_n[n] * S + at::matmul(k_n[n], u);
  }
  return {chunks::merge(at::stack(outputs, 2), length), S};
}

at::Tensor gated_delta_rule_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& g, const at::Tensor& beta,
                                   const DocumentChunks& layout, int64_t chunk_size) {
  PRIME_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes() && g.dim() == 3 &&
              beta.sizes() == g.sizes() && layout.scatter.size(0) == q.size(0) * q.size(1) &&
              layout.gather.size(0) == layout.count * chunk_size);
  const auto to_chunks = [&](const at::Tensor& x) { return to_document_chunks(x, layout); };
  const at::Tensor o = gated_delta_rule_chunked(to_chunks(q), to_chunks(k), to_chunks(v), to_chunks(g),
                                                to_chunks(beta), at::Tensor(), chunk_size, layout.starts)
                           .first;
  return from_document_chunks(o, layout, q.size(0), q.size(1));
}

}  // namespace prime::model
