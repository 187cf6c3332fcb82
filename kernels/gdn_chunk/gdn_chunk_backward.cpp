// GDN's chunked backward from the fused forward's per-chunk results (see gdn_chunk_backward.h for
// the math). Device-agnostic: the reverse walk and the inverse come from the caller.
#include "kernels/gdn_chunk/gdn_chunk_backward.h"

#include <cstdint>
#include <limits>
#include <vector>

#include "util/error.h"

namespace prime::kernels {

namespace {

constexpr int64_t kChunk = 64;

// x [B,T,H,...] -> [B*H, N, 64, ...], rows past T zero (the forward's padding).
at::Tensor to_chunks(const at::Tensor& x, int64_t N) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  std::vector<int64_t> shape{B, H, N * kChunk};
  for (int64_t dim = 3; dim < x.dim(); ++dim) shape.push_back(x.size(dim));
  at::Tensor out = at::empty(shape, x.options());
  out.narrow(2, 0, T).copy_(x.transpose(1, 2));
  if (N * kChunk > T) out.narrow(2, T, N * kChunk - T).zero_();
  shape = {B * H, N, kChunk};
  for (int64_t dim = 3; dim < x.dim(); ++dim) shape.push_back(x.size(dim));
  return out.view(shape);
}

// The inverse of to_chunks: [B*H, N, 64, ...] -> [B,T,H,...] contiguous.
at::Tensor from_chunks(const at::Tensor& x, int64_t B, int64_t T, int64_t H) {
  std::vector<int64_t> shape{B, H, x.size(1) * kChunk};
  for (int64_t dim = 3; dim < x.dim(); ++dim) shape.push_back(x.size(dim));
  return x.reshape(shape).narrow(2, 0, T).transpose(1, 2).contiguous();
}

at::Tensor transposed(const at::Tensor& x) { return x.transpose(-1, -2); }

// [M,N,...] -> [M*N,...] for the batched products (a view: the first two dims are contiguous with
// each other in every operand here, transposed or not).
at::Tensor batched(const at::Tensor& x) { return x.flatten(0, 1); }

// alpha a b over the [M,N] batch, in a fresh tensor.
at::Tensor product(const at::Tensor& a, const at::Tensor& b, double alpha) {
  at::Tensor out = at::empty({a.size(0), a.size(1), a.size(2), b.size(3)}, a.options());
  at::Tensor flat = batched(out);
  at::baddbmm_out(flat, flat, batched(a), batched(b), /*beta=*/0.0, alpha);
  return out;
}

// acc += alpha a b over the [M,N] batch, in place (acc contiguous).
void accumulate(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b, double alpha = 1.0) {
  batched(acc).baddbmm_(batched(a), batched(b), 1.0, alpha);
}

}  // namespace

GdnChunkGrads gdn_chunk_backward(const GdnChunkSaved& s, const at::Tensor& d_out, const at::Tensor& d_final,
                                 const GdnChunkBackwardOps& ops) {
  const int64_t B = s.q.size(0), T = s.q.size(1), H = s.q.size(2), D = s.q.size(3), M = B * H;
  const int64_t N = s.states.size(1);
  PRIME_CHECK(N * kChunk >= T && s.w.size(0) == M && s.w.size(2) == kChunk && s.states.size(2) == D,
              "gdn_chunk_backward: saved w ", s.w.sizes(), " and states ", s.states.sizes(), " for q ", s.q.sizes());
  const at::Tensor q = to_chunks(s.q, N), k = to_chunks(s.k, N), v = to_chunks(s.v, N);
  const at::Tensor g = to_chunks(s.g, N), beta = to_chunks(s.beta, N);  // [M,N,C]
  const at::Tensor d_o = d_out.defined() ? to_chunks(d_out, N) : at::zeros_like(q);
  const at::Tensor &W = s.w, &U = s.u, &K_d = s.k_decayed, &S = s.states;

  // Gamma in float64; the decays from its differences (exponents <= 0 on and below the diagonal).
  const at::ScalarType type = q.scalar_type();
  const at::Tensor gamma64 = at::cumsum(g.to(at::kDouble), -1);
  const at::Tensor e_gamma = at::exp(gamma64).to(type);
  const at::Tensor upper = at::ones({kChunk, kChunk}, g.options().dtype(at::kBool)).triu(1);
  const at::Tensor decay = at::exp((gamma64.unsqueeze(-1) - gamma64.unsqueeze(-2))
                                       .to(type)
                                       .masked_fill_(upper, -std::numeric_limits<double>::infinity()));
  const at::Tensor to_end = at::exp(gamma64.narrow(-1, kChunk - 1, 1) - gamma64).to(type);  // [M,N,C]

  // The output's side: scores, the walk's addend and the walk.
  const at::Tensor qk = at::matmul(q, transposed(k));
  const at::Tensor scores = qk * decay;
  at::Tensor q_state = q * e_gamma.unsqueeze(-1);
  accumulate(q_state, scores, W, -1.0);  // diag(e^Gamma) Q - scores W
  const at::Tensor d_states = at::matmul(transposed(q_state), d_o);
  const at::Tensor d_final_flat = d_final.defined() ? d_final.reshape({M, D, D}).contiguous() : d_final;
  const auto [G, d_initial] = ops.reverse_walk(K_d, W, d_states, s.decay, d_final_flat, s.starts);

  at::Tensor d_u = at::matmul(transposed(scores), d_o);  // dU_n = dU'
  accumulate(d_u, K_d, G);
  const at::Tensor d_w = product(d_u, transposed(S), -1.0);
  const at::Tensor d_q_decayed = at::matmul(d_o, transposed(S));  // d(diag(e^Gamma) Q)
  const at::Tensor d_k_decayed = at::matmul(U, transposed(G));
  const at::Tensor d_chunk_decay = (S * G).sum({-1, -2});  // [M,N]
  const at::Tensor d_scores = at::matmul(d_o, transposed(U));
  const at::Tensor d_qk = d_scores * decay;
  at::Tensor e = d_scores.mul_(qk).mul_(decay);  // dD * D from the scores (d_scores is not needed again)

  at::Tensor dq = at::matmul(d_qk, k).addcmul_(d_q_decayed, e_gamma.unsqueeze(-1));
  at::Tensor dk = at::matmul(transposed(d_qk), q);

  // The solve: U' = T diag(beta) V, W = T diag(beta e^Gamma) K, T = (I + A)^-1.
  const at::Tensor kk = at::matmul(k, transposed(k));
  const at::Tensor inverse =
      s.inverse.defined() ? s.inverse : ops.inverse((beta.unsqueeze(-1) * kk * decay).tril_(-1));
  const at::Tensor k_scale = beta * e_gamma;  // [M,N,C]
  const at::Tensor v_in = v * beta.unsqueeze(-1), k_in = k * k_scale.unsqueeze(-1);
  at::Tensor d_inverse = at::matmul(d_u, transposed(v_in));
  accumulate(d_inverse, d_w, transposed(k_in));
  const at::Tensor d_v_in = at::matmul(transposed(inverse), d_u);
  const at::Tensor d_k_in = at::matmul(transposed(inverse), d_w);
  // dA = -T^T dT T^T below the diagonal; A = beta_i (k_i . k_j) D_ij there.
  const at::Tensor d_a_decayed =
      product(at::matmul(transposed(inverse), d_inverse), transposed(inverse), -1.0).tril_(-1).mul_(decay);
  const at::Tensor d_kk = d_a_decayed * beta.unsqueeze(-1);
  accumulate(dk, d_kk, k);
  accumulate(dk, transposed(d_kk), k);
  const at::Tensor d_a_kk = d_a_decayed.mul_(kk);  // d_a_decayed is not needed again
  at::Tensor d_beta = d_a_kk.sum(-1);
  e.addcmul_(d_a_kk, beta.unsqueeze(-1));  // dD * D from A

  const at::Tensor dv = d_v_in * beta.unsqueeze(-1);
  d_beta.add_((d_v_in * v).sum(-1));
  const at::Tensor k_in_dot = (d_k_in * k).sum(-1);  // [M,N,C]
  dk.addcmul_(d_k_in, k_scale.unsqueeze(-1));
  d_beta.addcmul_(k_in_dot, e_gamma);

  // The gates. dg_t = sum_{s >= t} dGamma_s, but the decays' terms are summed straight into dg:
  // through dGamma they would enter as differences that cancel in exact arithmetic (D_ii = 1 adds
  // to dGamma_i and takes away from it, as does K_d's last row), which in fp32 leaves rounding
  // of the large diagonal terms where strong decays leave dg small.
  //  - e^Gamma in K's right-hand side and in Q: through dGamma.
  at::Tensor d_gamma = k_in_dot * k_scale;
  d_gamma.addcmul_((d_q_decayed * q).sum(-1), e_gamma);
  at::Tensor dg = at::flip(at::cumsum(at::flip(d_gamma, {-1}), -1), {-1});
  //  - D_ij = e^{Gamma_i - Gamma_j} depends on g_t for j < t <= i: dg_t += sum_{j < t} X_tj with
  //    X_tj = sum_{i >= t} E_ij, E = dD * D (columns summed from the bottom: a scan along the
  //    rows, which is fast; one along each row is not).
  const at::Tensor from_bottom = at::flip(at::cumsum(at::flip(e, {-2}), -2), {-2});
  dg.add_(from_bottom.tril_(-1).sum(-1));
  //  - K_d = diag(e^{Gamma_C - Gamma}) K depends on g_t for t > i: dg_t += sum_{i < t} r_i.
  const at::Tensor k_decayed_dot = (d_k_decayed * k).sum(-1) * to_end;
  dk.addcmul_(d_k_decayed, to_end.unsqueeze(-1));
  dg.narrow(-1, 1, kChunk - 1).add_(at::cumsum(k_decayed_dot.narrow(-1, 0, kChunk - 1), -1));
  //  - the chunk decay e^{Gamma_C} depends on every g_t.
  dg.add_((d_chunk_decay * s.decay).unsqueeze(-1));

  GdnChunkGrads grads;
  grads.q = from_chunks(dq, B, T, H);
  grads.k = from_chunks(dk, B, T, H);
  grads.v = from_chunks(dv, B, T, H);
  grads.g = from_chunks(dg, B, T, H);
  grads.beta = from_chunks(d_beta, B, T, H);
  grads.state = d_initial.view({B, H, D, D});
  return grads;
}

}  // namespace prime::kernels
