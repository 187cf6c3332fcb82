// GDN's chunked backward from the fused forward's per-chunk results (see gdn_chunk_backward.h for
// the math). The reverse walk and the inverse come from the caller; the batched products run on
// kernels/chunk_gemm (cuBLAS's or the CPU's where it does not apply); the elementwise chain rule
// runs in gdn_backward_kernels.cu on CUDA and in ATen ops elsewhere (the float64 reference tests).
#include "kernels/gdn_chunk/gdn_chunk_backward.h"

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "kernels/chunk_gemm/chunk_gemm.h"
#include "kernels/common/policy.h"
#include "kernels/common/switches.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/gdn_chunk/gdn_chunk_launch.h"
#endif

namespace prime::kernels {

namespace {

constexpr int64_t kChunk = 64;

// x [B,T,H,...] -> [B*H, N, 64, ...] in `type`, rows past T zero (the forward's padding). A copy that
// keeps the dtype moves each row's last dim as 8-byte words where it can (its stride 1, its bytes a
// multiple of 8): the same bytes in a quarter of bf16's elements, which is what a strided copy's time
// follows.
at::Tensor to_chunks(const at::Tensor& x, int64_t N, at::ScalarType type) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  std::vector<int64_t> shape{B, H, N * kChunk};
  for (int64_t dim = 3; dim < x.dim(); ++dim) shape.push_back(x.size(dim));
  at::Tensor out = at::empty(shape, x.options().dtype(type));
  const at::Tensor from = x.transpose(1, 2);
  at::Tensor to = out.narrow(2, 0, T);
  const auto words = [](const at::Tensor& t) {
    if (t.dim() < 4 || t.stride(-1) != 1 || (t.size(-1) * t.element_size()) % 8 != 0) return false;
    if ((t.storage_offset() * t.element_size()) % 8 != 0) return false;
    for (int64_t dim = 0; dim + 1 < t.dim(); ++dim)
      if ((t.stride(dim) * t.element_size()) % 8 != 0) return false;
    return true;
  };
  if (x.scalar_type() == type && words(from) && words(to))
    to.view(at::kLong).copy_(from.view(at::kLong));
  else
    to.copy_(from);
  if (N * kChunk > T) out.narrow(2, T, N * kChunk - T).zero_();
  shape = {B * H, N, kChunk};
  for (int64_t dim = 3; dim < x.dim(); ++dim) shape.push_back(x.size(dim));
  return out.view(shape);
}

// q, k, v or dO [B,T,H,D] per chunk, [B,H,N,64,D] in `type`: a view of x itself where T = 64 N, x is of
// `type` and its rows lie on 16-byte vectors (chunk_gemm and the rows kernel read it in place: no copy),
// else to_chunks' copy.
at::Tensor per_chunk_rows(const at::Tensor& x, int64_t N, at::ScalarType type) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  const int64_t vector = 16 / static_cast<int64_t>(x.element_size());
  bool in_place = x.scalar_type() == type && T == N * kChunk && x.stride(3) == 1 &&
                  reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  for (int64_t dim = 0; dim < 3 && in_place; ++dim) in_place = x.stride(dim) % vector == 0;
  if (in_place) return x.unflatten(1, {N, kChunk}).permute({0, 3, 1, 2, 4});
  return to_chunks(x, N, type).view({B, H, N, kChunk, D});
}

// The inverse of to_chunks: [B*H, N, 64, ...] -> [B,T,H,...] contiguous.
at::Tensor from_chunks(const at::Tensor& x, int64_t B, int64_t T, int64_t H) {
  std::vector<int64_t> shape{B, H, x.size(1) * kChunk};
  for (int64_t dim = 3; dim < x.dim(); ++dim) shape.push_back(x.size(dim));
  return x.reshape(shape).narrow(2, 0, T).transpose(1, 2).contiguous();
}

at::Tensor transposed(const at::Tensor& x) { return x.transpose(-1, -2); }

// A time-major gradient [B, 64 N, H, D] seen per chunk as [B,H,N,64,D] (a view).
at::Tensor chunk_view(const at::Tensor& x, int64_t N) { return x.unflatten(1, {N, kChunk}).permute({0, 3, 1, 2, 4}); }

// The backward's batched products over the [M,N] batch, in one arithmetic (kernels/chunk_gemm: 3xTF32
// or bf16 tensor cores on CUDA fp32, baddbmm elsewhere); column_scale [M,N,n], if given, scales a
// product's columns; `type`, if given, the result's dtype (bf16: a bf16 product's operand, rounded as
// that product would round it as it loads it). Results are [M,N,m,n].
struct Products {
  GemmPrecision precision = GemmPrecision::Fp32;
  // Operands [B,H,N,...] (per_chunk_rows' views of the inputs among them) and [M,N,...], taken as
  // [M/H,H,N,...]: a batch of three dims (H = heads).
  int64_t heads = 1;

  at::Tensor batched(const at::Tensor& x) const {
    return x.dim() == 5 ? x : x.unflatten(0, {x.size(0) / heads, heads});
  }

  // alpha a b in a fresh tensor.
  at::Tensor operator()(const at::Tensor& a, const at::Tensor& b, double alpha = 1.0,
                        const at::Tensor& column_scale = at::Tensor(),
                        at::ScalarType type = at::ScalarType::Undefined) const {
    return sum({GemmTerm{a, b, alpha, column_scale}}, type);
  }
  // The terms' sum in a fresh tensor, in one pass where chunk_gemm_sum takes them together.
  at::Tensor sum(std::vector<GemmTerm> terms, at::ScalarType type = at::ScalarType::Undefined) const {
    const at::Tensor& a = terms.front().a;
    const int64_t chunks = a.dim() == 5 ? a.size(2) : a.size(1);  // N
    for (GemmTerm& term : terms) {
      term.a = batched(term.a), term.b = batched(term.b);
      if (term.column_scale.defined()) term.column_scale = batched(term.column_scale);
    }
    const at::Tensor out = chunk_matmul_sum(terms, precision, type);
    return out.view({-1, chunks, out.size(-2), out.size(-1)});
  }
  // out = the terms' sum (out [B,H,N,m,n] or [M,N,m,n], a view as it lies), in one pass where chunk_gemm_sum
  // takes them together. `one_launch` names a sum that must be one launch (a sum declined there runs term by
  // term at several times the cost: a layout the sum's author meant the kernel to take, an error).
  void into(at::Tensor out, std::vector<GemmTerm> terms, const char* one_launch = nullptr) const {
    for (GemmTerm& term : terms) {
      term.a = batched(term.a), term.b = batched(term.b);
      for (at::Tensor* x : {&term.column_scale, &term.row_scale, &term.dot_with, &term.dots})
        if (x->defined()) *x = batched(*x);
    }
    at::Tensor flat = batched(out);
    PRIME_CHECK(one_launch == nullptr || chunk_gemm_sum_apply(flat, terms, precision), "GDN backward: chunk_gemm ",
                "declined the ", one_launch, " sum (", terms.size(), " terms into ", flat.sizes(), "), which it ",
                "should take in one launch");
    chunk_gemm_sum(flat, terms, 0.0, precision);
  }
  // acc += alpha a b, in place (acc contiguous).
  void accumulate(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b, double alpha = 1.0,
                  const at::Tensor& column_scale = at::Tensor()) const {
    at::Tensor flat = batched(acc);
    chunk_gemm(flat, batched(a), batched(b), alpha, 1.0, column_scale.defined() ? batched(column_scale) : column_scale,
               precision);
  }
};

// The chain rule's operands after the batched products, per chunk ([M,N,64,...]; q, k and v are
// per_chunk_rows' [B,H,N,64,D] for the products and the rows kernel, [M,N,64,D] for the ATen chain rule).
struct ChainRule {
  at::Tensor q, k, v, g, beta, gamma64, e_gamma;  // inputs laid out per chunk; Gamma; e^Gamma
  at::Tensor d_scores, qk, kk, p;  // dO U^T, Q K^T, K K^T, T^T dT T^T (all [64][64]; qk, kk and p undefined
                                   // where the gates kernel forms them from q, k, T and dT: gate_parts)
  at::Tensor inverse, d_inverse;   // T and dT (bf16), where the gates kernel forms P
  at::Tensor d_o_rows, u_rows;     // dO's and U's bf16 rows, where the gates kernel forms d_scores (undefined)
  at::Tensor d_q_decayed, d_k_in, d_k_decayed, d_v_in;  // d(e^Gamma Q), d(beta e^Gamma K), dK_d, d(beta V)
  at::Tensor chunk_decay, d_chunk_decay;  // e^{Gamma_C} and its gradient, [M,N]
};

struct ChainGrads {
  at::Tensor dq, dk, dv, dg, d_beta;  // per chunk ([M,N,64,...]), or in the inputs' layout (kernels)
};

// The decay matrix D_ij = e^{Gamma_i - Gamma_j} (j <= i; 0 above the diagonal) from float64 Gamma.
at::Tensor decay_matrix(const at::Tensor& gamma64, at::ScalarType type) {
  const at::Tensor upper = at::ones({kChunk, kChunk}, gamma64.options().dtype(at::kBool)).triu(1);
  return at::exp((gamma64.unsqueeze(-1) - gamma64.unsqueeze(-2))
                     .to(type)
                     .masked_fill_(upper, -std::numeric_limits<double>::infinity()));
}

// The chain rule in ATen ops. The gates: dg_t = sum_{s >= t} dGamma_s, but the decays' terms are
// summed straight into dg: through dGamma they would enter as differences that cancel in exact
// arithmetic (D_ii = 1 adds to dGamma_i and takes away from it, as does K_d's last row), which in
// fp32 leaves the rounding of large diagonal terms where strong decays leave dg small.
ChainGrads chain_rule_aten(const ChainRule& c, const at::Tensor& decay, const Products& product) {
  const at::Tensor &q = c.q, &k = c.k, &v = c.v, &beta = c.beta, &e_gamma = c.e_gamma;
  const at::Tensor to_end = at::exp(c.gamma64.narrow(-1, kChunk - 1, 1) - c.gamma64).to(q.scalar_type());
  const at::Tensor d_qk = c.d_scores * decay;
  at::Tensor e = c.d_scores * c.qk * decay;  // dD * D from the scores
  ChainGrads out;
  out.dq = product(d_qk, k).addcmul_(c.d_q_decayed, e_gamma.unsqueeze(-1));
  out.dk = product(transposed(d_qk), q);
  // dA = -T^T dT T^T below the diagonal; A = beta_i (k_i . k_j) D_ij there.
  const at::Tensor d_a_decayed = (-c.p).tril_(-1).mul_(decay);
  const at::Tensor d_kk = d_a_decayed * beta.unsqueeze(-1);
  product.accumulate(out.dk, d_kk, k);
  product.accumulate(out.dk, transposed(d_kk), k);
  const at::Tensor d_a_kk = d_a_decayed.mul_(c.kk);
  out.d_beta = d_a_kk.sum(-1);
  e.addcmul_(d_a_kk, beta.unsqueeze(-1));  // dD * D from A
  const at::Tensor k_scale = beta * e_gamma;
  out.dv = c.d_v_in * beta.unsqueeze(-1);
  out.d_beta.add_((c.d_v_in * v).sum(-1));
  const at::Tensor k_in_dot = (c.d_k_in * k).sum(-1);  // [M,N,C]
  out.dk.addcmul_(c.d_k_in, k_scale.unsqueeze(-1));
  out.d_beta.addcmul_(k_in_dot, e_gamma);
  //  - e^Gamma in K's right-hand side and in Q: through dGamma.
  at::Tensor d_gamma = k_in_dot * k_scale;
  d_gamma.addcmul_((c.d_q_decayed * q).sum(-1), e_gamma);
  out.dg = at::flip(at::cumsum(at::flip(d_gamma, {-1}), -1), {-1});
  //  - D_ij depends on g_t for j < t <= i: dg_t += sum_{j < t} X_tj with X_tj = sum_{i >= t} E_ij
  //    (columns summed from the bottom: a scan along the rows, which is fast; one along each row
  //    is not).
  out.dg.add_(at::flip(at::cumsum(at::flip(e, {-2}), -2), {-2}).tril_(-1).sum(-1));
  //  - K_d = diag(e^{Gamma_C - Gamma}) K depends on g_t for t > i: dg_t += sum_{i < t} r_i.
  const at::Tensor k_decayed_dot = (c.d_k_decayed * k).sum(-1) * to_end;
  out.dk.addcmul_(c.d_k_decayed, to_end.unsqueeze(-1));
  out.dg.narrow(-1, 1, kChunk - 1).add_(at::cumsum(k_decayed_dot.narrow(-1, 0, kChunk - 1), -1));
  //  - the chunk decay e^{Gamma_C} depends on every g_t.
  out.dg.add_((c.d_chunk_decay * c.chunk_decay).unsqueeze(-1));
  return out;
}

// The chunk decays' gradient sum(S_n o G_n) [M,N] from S and G [M,N,D,D] (CUDA: one reduction kernel).
at::Tensor chunk_decay_gradient(const at::Tensor& S, const at::Tensor& G, bool on_kernels) {
#ifdef PRIME_WITH_CUDA
  const int64_t M = G.size(0), N = G.size(1), D = G.size(2);
  if (on_kernels && (D * D) % 4 == 0) {
    at::Tensor out = at::empty({M, N}, G.options());
    detail::launch_gdn_backward_state_dot(S.view({M * N, D, D}), G.view({M * N, D, D}), out.view({M * N}));
    return out;
  }
#else
  (void)on_kernels;
#endif
  return (S * G).sum({-1, -2});
}

#ifdef PRIME_WITH_CUDA
// The gates kernel's part of the chain rule on CUDA: d(QK^T) and d(KK^T) + d(KK^T)^T (bf16 for bf16 products,
// the rounding they would make as they load them; else written over d_scores and p), d_beta_a and dg_decay.
struct GateParts {
  at::Tensor d_qk, d_kk, d_beta_a, dg_decay;
};
GateParts gate_parts(const ChainRule& c, const Products& product) {
  const int64_t MN = c.g.size(0) * c.g.size(1);
  const auto chunks = [&](const at::Tensor& x) { return x.view({MN, kChunk, x.size(-1)}); };
  GateParts out;
  out.d_beta_a = at::empty({MN, kChunk}, c.g.options()), out.dg_decay = at::empty_like(out.d_beta_a);
  const bool bf16_products = product.precision == GemmPrecision::Bf16;
  const auto gate_product = [&](const at::Tensor& in) {
    return bf16_products ? at::empty(in.sizes(), in.options().dtype(at::kBFloat16)) : in;
  };
  const at::Tensor g = c.g.view({MN, kChunk}), beta = c.beta.view({MN, kChunk});
  if (c.qk.defined()) {
    out.d_qk = gate_product(c.d_scores), out.d_kk = gate_product(c.p);
    detail::launch_gdn_backward_gates(chunks(c.d_scores), chunks(c.qk), chunks(c.p), chunks(c.kk), g, beta,
                                      chunks(out.d_qk), chunks(out.d_kk), out.d_beta_a, out.dg_decay);
  } else {  // bf16 products
    const at::TensorOptions bf16 = c.g.options().dtype(at::kBFloat16);
    // [M,N,C,C], as the products that read them batch it
    const std::vector<int64_t> sizes{c.g.size(0), c.g.size(1), kChunk, kChunk};
    out.d_qk = at::empty(sizes, bf16), out.d_kk = at::empty(sizes, bf16);
    detail::launch_gdn_backward_gates_from_rows(
        c.d_scores.defined() ? chunks(c.d_scores) : c.d_scores, {c.d_o_rows, c.u_rows}, c.q, c.k, chunks(c.inverse),
        chunks(c.d_inverse), g, beta, chunks(out.d_qk), chunks(out.d_kk), out.d_beta_a, out.dg_decay);
  }
  return out;
}

// What the chain rule's last products read where they take the rows kernel's work (chain_rule_sums): dO,
// the states S_n, U_n, G_n, T, dW and dU; and dv in the inputs' layout with its row dots with v, where the value
// kernel formed them (value_side; else dv is one of those products).
struct SumOperands {
  at::Tensor d_o, states, u, grads_after, inverse, d_w, d_u, dv, v_dots;
};

// The value side in one kernel (gdn_backward_value_kernels.cu): dW = -dU S^T, dT = dU (diag(beta) V)^T + dW
// (diag(beta e^Gamma) K)^T and dv = diag(beta) T^T dU (in the inputs' layout, `grad_type`) with its row dots with v,
// dU read once; the products chunk_gemm would form, the same bits.
struct ValueSide {
  at::Tensor d_w, d_inverse, dv, v_dots;
};
ValueSide value_side(const ChainRule& c, const at::Tensor& d_u, const at::Tensor& S, const at::Tensor& inverse,
                     int64_t B, int64_t H, at::ScalarType grad_type) {
  const int64_t M = c.g.size(0), N = c.g.size(1), D = c.v.size(-1), MN = M * N, tiles = (D + 63) / 64;
  const at::TensorOptions bf16 = d_u.options().dtype(at::kBFloat16), fp32 = c.g.options();
  ValueSide out;
  out.d_w = new_output({M, N, kChunk, D}, bf16);
  out.d_inverse = new_output({M, N, kChunk, kChunk}, bf16);
  out.dv = new_output({B, N * kChunk, H, D}, fp32.dtype(grad_type));
  out.v_dots = new_output({B, H, N, tiles, kChunk}, fp32);
  const auto chunks = [&](const at::Tensor& x) { return x.view({MN, x.size(-2), x.size(-1)}); };
  detail::launch_gdn_backward_value({chunks(d_u), chunks(S), chunks(inverse), c.v, c.k, c.beta.view({MN, kChunk}),
                                     c.e_gamma.view({MN, kChunk}), chunks(out.d_w), chunks(out.d_inverse),
                                     chunk_view(out.dv, N), out.v_dots.view({MN, tiles, kChunk})});
  return out;
}

// The chain rule's last step as three sums of products written in the inputs' layout and dtype, each row's
// scale and dot taken by the product that forms it (chunk_gemm's row scales and dots), then dg and dbeta from
// the dots (one small kernel): dq = d(QK^T) K + diag(e^Gamma) dO S^T, dk = d(QK^T)^T Q + d(KK^T) K +
// diag(beta e^Gamma) T^T dW + diag(e^{Gamma_C - Gamma}) U G^T, dv = diag(beta) T^T dU. The same sums as
// chain_rule_kernels' products and rows kernel, without the six [M,N,64,D] fp32 intermediates between them.
ChainGrads chain_rule_sums(const ChainRule& c, const SumOperands& o, int64_t B, int64_t T, int64_t H,
                           const Products& product, at::ScalarType qkv_grad_type, bool query_key_kernels) {
  const int64_t M = c.g.size(0), N = c.g.size(1), D = c.q.size(-1), MN = M * N, tiles = (D + 63) / 64;
  const GateParts gates = gate_parts(c, product);
  // [B, 64 N, H, D] seen per chunk as [B,H,N,64,D]: the gradients as they lie (cut to T after, where T < 64 N).
  const auto gradient = [&]() { return at::empty({B, N * kChunk, H, D}, c.g.options().dtype(qkv_grad_type)); };
  const auto per_chunk = [&](const at::Tensor& x) { return chunk_view(x, N); };
  const auto dots = [&]() { return at::empty({B, H, N, tiles, kChunk}, c.g.options()); };
  const at::Tensor to_end = at::exp(c.gamma64.narrow(-1, kChunk - 1, 1) - c.gamma64).to(at::kFloat);
  const at::Tensor k_scale = c.beta * c.e_gamma;
  // Operands in bf16 (the split walk's G and dU are fp32; a sum's terms must share their operands' dtypes to
  // be one launch): rounded to nearest even, as the kernel rounds an fp32 operand as it loads it, so the same
  // products. The rounding keeps a transposed view's strides.
  const auto bf16 = [](const at::Tensor& x) { return x.scalar_type() == at::kBFloat16 ? x : x.to(at::kBFloat16); };
  const auto term = [&](const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_scale = at::Tensor(),
                        const at::Tensor& dot_with = at::Tensor(), const at::Tensor& dots_out = at::Tensor()) {
    GemmTerm t(bf16(a), bf16(b));
    t.row_scale = row_scale, t.dot_with = dot_with, t.dots = dots_out;
    return t;
  };
  at::Tensor dq = gradient(), dk = gradient(), dv = o.dv.defined() ? o.dv : gradient();
  const at::Tensor q_dots = dots(), k_in_dots = dots(), k_decayed_dots = dots();
  const at::Tensor v_dots = o.dv.defined() ? o.v_dots : dots();
  // dq's and dk's sums in one kernel each where their operands are bf16 chunks as it takes them (every operand
  // read once; chunk_gemm's bits), else each sum one chunk_gemm launch where D is a multiple of 16 (the kernel's
  // tile rule; else term by term).
  const auto by_chunk = [&](const at::Tensor& x) {  // [MN, m, n], where x lies so
    return x.defined() && x.is_contiguous() ? x.view({MN, x.size(-2), x.size(-1)}) : at::Tensor();
  };
  const auto per_step = [&](const at::Tensor& x) { return x.view({MN, kChunk}); };
  const detail::GdnBackwardQueryKey query_key{c.q,
                                              c.k,
                                              o.d_o,
                                              by_chunk(gates.d_qk),
                                              by_chunk(gates.d_kk),
                                              by_chunk(o.inverse),
                                              by_chunk(o.states),
                                              by_chunk(o.grads_after),
                                              by_chunk(o.u),
                                              by_chunk(o.d_w),
                                              per_step(c.e_gamma),
                                              per_step(k_scale),
                                              per_step(to_end),
                                              per_chunk(dq),
                                              per_chunk(dk),
                                              by_chunk(q_dots),
                                              by_chunk(k_in_dots),
                                              by_chunk(k_decayed_dots)};
  const auto once = [&](const char* name) { return D % 16 == 0 ? name : nullptr; };
  if (query_key_kernels && detail::gdn_backward_query_key_apply(query_key)) {
    detail::launch_gdn_backward_query_key(query_key);
  } else {
    product.into(per_chunk(dq), {term(gates.d_qk, c.k), term(o.d_o, transposed(o.states), c.e_gamma, c.q, q_dots)},
                 once("dq"));
    product.into(per_chunk(dk), {term(transposed(gates.d_qk), c.q), term(transposed(gates.d_kk), c.k),
                                 term(transposed(o.inverse), o.d_w, k_scale, c.k, k_in_dots),
                                 term(o.u, transposed(o.grads_after), to_end, c.k, k_decayed_dots)},
                 once("dk"));
  }
  if (!o.dv.defined())
    product.into(per_chunk(dv), {term(transposed(o.inverse), o.d_u, c.beta, c.v, v_dots)}, once("dv"));
  ChainGrads out;
  out.dg = at::empty({B, T, H}, c.g.options());
  out.d_beta = at::empty_like(out.dg);
  const auto flat = [&](const at::Tensor& x) { return x.view({MN, tiles, kChunk}); };
  detail::launch_gdn_backward_gate_grads({flat(q_dots), flat(k_in_dots), flat(k_decayed_dots), flat(v_dots),
                                          c.g.view({MN, kChunk}), c.beta.view({MN, kChunk}), gates.d_beta_a,
                                          gates.dg_decay, c.chunk_decay.reshape({MN}),
                                          c.d_chunk_decay.reshape({MN}).contiguous(), out.dg, out.d_beta});
  const auto cut = [&](const at::Tensor& x) { return N * kChunk == T ? x : x.narrow(1, 0, T).contiguous(); };
  out.dq = cut(dq), out.dk = cut(dk), out.dv = cut(dv);
  return out;
}

// The same on CUDA: two kernels (the [64][64] part and the rows) around the dq and dk products.
// The rows kernel writes the gradients in the inputs' layout [B,T,H,...].
ChainGrads chain_rule_kernels(const ChainRule& c, int64_t B, int64_t T, int64_t H, const Products& product,
                              at::ScalarType qkv_grad_type) {
  const int64_t M = c.g.size(0), N = c.g.size(1), D = c.q.size(-1), MN = M * N;
  const auto chunks = [&](const at::Tensor& x) { return x.view({MN, kChunk, x.size(-1)}); };
  const auto gates = [&](const at::Tensor& x) { return x.view({MN, kChunk}); };
  const at::Tensor g = gates(c.g), beta = gates(c.beta);
  const GateParts parts = gate_parts(c, product);
  const at::Tensor &d_qk = parts.d_qk, &d_kk = parts.d_kk, &d_beta_a = parts.d_beta_a, &dg_decay = parts.dg_decay;
  const at::Tensor dq = product(d_qk, c.k);
  // d_kk holds d(KK^T) + d(KK^T)^T (symmetric): dK's products with K in one, read transposed as d(QK^T) is, so
  // the two terms are one launch with bf16 products.
  const at::Tensor dk = product.sum(
      {GemmTerm{transposed(d_qk), c.q, 1.0, at::Tensor()}, GemmTerm{transposed(d_kk), c.k, 1.0, at::Tensor()}});
  ChainGrads out;
  out.dq = at::empty({B, T, H, D}, c.g.options().dtype(qkv_grad_type));  // written by the rows kernel
  out.dk = at::empty_like(out.dq);
  out.dv = at::empty_like(out.dq);
  out.dg = at::empty({B, T, H}, c.g.options());
  out.d_beta = at::empty_like(out.dg);
  detail::GdnBackwardRows rows{c.q,              c.k,                  c.v,                chunks(c.d_q_decayed),
                               chunks(c.d_k_in), chunks(c.d_k_decayed), chunks(c.d_v_in),   chunks(dq),
                               chunks(dk),       g,                     beta,               d_beta_a,
                               dg_decay,         c.chunk_decay.reshape({MN}),
                               c.d_chunk_decay.reshape({MN}).contiguous(),
                               out.dq,           out.dk,                out.dv,             out.dg,
                               out.d_beta};
  detail::launch_gdn_backward_rows(rows);
  return out;
}
#endif

}  // namespace

GdnBackwardWalk gdn_bf16_backward_walk() {
  return environment_switch<GdnBackwardWalk>(
      "PRIME_GDN_BACKWARD_WALK",
      {{"auto", GdnBackwardWalk::Auto, "the fused reverse walk where it fits the GPU and the products are bf16"},
       {"split", GdnBackwardWalk::Split, "GDN's backward from its bf16 forward walks on its addend formed first"},
       {"fused", GdnBackwardWalk::Fused, "the fused reverse walk"}});
}

GdnBackwardSums gdn_backward_sums() {
  return environment_switch<GdnBackwardSums>(
      "PRIME_GDN_BACKWARD_SUMS",
      {{"kernels", GdnBackwardSums::Kernels, "GDN's backward forms dW, dT, dv, dq and dk in one kernel per chunk each"},
       {"value", GdnBackwardSums::Value, "GDN's backward forms dW, dT and dv in one kernel, dq and dk on chunk_gemm"},
       {"products", GdnBackwardSums::Products, "GDN's backward forms dW, dT, dv, dq and dk on chunk_gemm's launches"}});
}

GemmPrecision gdn_bf16_backward_products() {
  return environment_switch<GemmPrecision>(
      "PRIME_GDN_BACKWARD_PRODUCTS",
      {{"bf16", GemmPrecision::Bf16, "GDN's backward from its bf16 forward multiplies on bf16 operands"},
       {"fp32", GemmPrecision::Fp32, "on 3xTF32, fp32 accuracy"}});
}

GdnChunkGrads gdn_chunk_backward(const GdnChunkSaved& s, const at::Tensor& d_out, const at::Tensor& d_final,
                                 const GdnChunkBackwardOps& ops, at::ScalarType qkv_grad_type) {
  const int64_t B = s.q.size(0), T = s.q.size(1), H = s.q.size(2), D = s.q.size(3), M = B * H;
  const int64_t N = s.states.size(1);
  PRIME_CHECK(N * kChunk >= T && s.w.size(0) == M && s.w.size(2) == kChunk && s.states.size(2) == D,
              "gdn_chunk_backward: saved w ", s.w.sizes(), " and states ", s.states.sizes(), " for q ", s.q.sizes());
  // The bf16 forward's results (bf16 q, k, v, W, U_n, K_d and states) are taken in fp32: the chain
  // rule below runs in fp32 on their exact values, its batched products on bf16 operands
  // (gdn_bf16_backward_products), and the gradients come back in fp32 (the caller rounds them for bf16
  // leaves). What the gradients then carry is mostly the bf16 forward's own rounding: up to 1.6x
  // their sensitivity to bf16 inputs, bf16 products included (experiments/gdn_bf16_backward).
  const bool bf16 = s.q.scalar_type() == at::kBFloat16;
  const at::ScalarType work = bf16 ? at::kFloat : s.q.scalar_type();
  bool on_kernels = false;
#ifdef PRIME_WITH_CUDA
  on_kernels = s.q.is_cuda() && work == at::kFloat;
#endif
  // The products take a batch of [B,H,N] (per_chunk_rows' views of the inputs among their operands).
  const Products product{bf16 ? gdn_bf16_backward_products() : GemmPrecision::Fp32, H};
  const auto in_work = [&](const at::Tensor& x) { return bf16 ? x.to(work) : x; };
  // A bf16 result as a product's operand: read as it is by bf16 products (chunk_gemm), else in fp32.
  const auto as_operand = [&](const at::Tensor& x) {
    return bf16 && product.precision == GemmPrecision::Bf16 ? x : in_work(x);
  };
  // On the kernels with bf16 products, q, k and v stay bf16 (per chunk; the products and the rows kernel
  // read them as they are, the elementwise terms widen them): their exact values, as an fp32 copy would
  // hold, at half its traffic. dO, which only products read, is rounded to bf16 once where it is laid out:
  // the rounding each product would make as it loads it (round to nearest even). They are [B,H,N,64,D], in
  // place where T is a multiple of 64 (per_chunk_rows), on the kernels and off them alike.
  const at::ScalarType inputs = on_kernels && bf16 && product.precision == GemmPrecision::Bf16 ? at::kBFloat16 : work;
  const auto rows = [&](const at::Tensor& x) { return per_chunk_rows(x, N, inputs); };
  ChainRule c;
  c.q = rows(s.q), c.k = rows(s.k), c.v = rows(s.v);
  c.g = to_chunks(s.g, N, work), c.beta = to_chunks(s.beta, N, work);  // [M,N,C]
  // The per-chunk results and the large intermediates are let go after their last use (each [M,N,D,D]
  // one is 1 GB at (4,8192,32,128) in fp32; the bf16 results' fp32 copies are made where needed).
  const at::Tensor &q = c.q, &k = c.k;
  const at::Tensor d_o = d_out.defined() ? rows(d_out) : at::zeros(q.sizes(), q.options());
  // [M,N,64,D] contiguous (a copy where q, k are [B,H,N,64,D] views; with B = 1 the reshape alone would be a
  // strided view): the split walk's elementwise terms, whose results its scan and products take contiguous.
  const auto chunk_major = [&](const at::Tensor& x) { return x.reshape({M, N, kChunk, x.size(-1)}).contiguous(); };

  // Gamma in float64, as in the forward; the decays from its differences.
  c.gamma64 = at::cumsum(c.g.to(at::kDouble), -1);
  c.e_gamma = at::exp(c.gamma64).to(work);
  const at::Tensor decay = on_kernels ? at::Tensor() : decay_matrix(c.gamma64, work);

  // With bf16 products on CUDA the last products take the rows kernel's work (chain_rule_sums): d(e^Gamma Q),
  // dK_d, d(beta V) and d(beta e^Gamma K) are terms of dq's, dk's and dv's sums there, not tensors of their own.
  bool sums = false, grams_in_kernels = false;
#ifdef PRIME_WITH_CUDA
  sums = on_kernels && product.precision == GemmPrecision::Bf16;
  // There, after the fused reverse walk (the split walk's scores take Q K^T), the gates kernel and the inverse's
  // form Q K^T and K K^T from q's and k's bf16 rows themselves, and the gates kernel P = T^T dT T^T: four
  // products and their [M,N,64,64] results fewer.
  grams_in_kernels =
      sums && ops.fused_walk && ops.inverse_from_keys && detail::gdn_backward_key_rows_apply(q, k);
#endif

  // The output's side: scores, the walk's addend and the walk, and dU_n = dU'.
  if (!grams_in_kernels) c.qk = product(q, transposed(k));
  const at::Tensor d_final_flat = d_final.defined() ? d_final.reshape({M, D, D}).contiguous() : d_final;
  at::Tensor G, d_initial, d_u;
  if (ops.fused_walk) {
    GdnFusedWalk walked = ops.fused_walk(s, c.gamma64, d_out, d_final_flat);
    G = walked.grads_after, d_u = walked.d_u, d_initial = walked.d_initial, c.d_chunk_decay = walked.d_chunk_decay;
  } else {
    // K_d = diag(e^{Gamma_C - Gamma}) K as the forward stores it (bf16), where that forward (the fused walk)
    // did not keep it.
    at::Tensor K_d;
    if (s.k_decayed.defined()) {
      K_d = in_work(s.k_decayed);
    } else {
      const at::Tensor to_end = at::exp(c.gamma64.narrow(-1, kChunk - 1, 1) - c.gamma64).to(work).unsqueeze(-1);
      K_d = in_work((chunk_major(c.k).to(work) * to_end).to(s.q.scalar_type()));
    }
    at::Tensor W = in_work(s.w);
    at::Tensor scores;
    if (on_kernels) {
#ifdef PRIME_WITH_CUDA
      scores = at::empty_like(c.qk);
      detail::launch_gdn_backward_scores(c.qk.view({M * N, kChunk, kChunk}), c.g.view({M * N, kChunk}),
                                         scores.view({M * N, kChunk, kChunk}));
#endif
    } else {
      scores = c.qk * decay;
    }
    at::Tensor q_state = chunk_major(q) * c.e_gamma.unsqueeze(-1);
    product.accumulate(q_state, scores, W, -1.0);  // diag(e^Gamma) Q - scores W
    at::Tensor d_states = product(transposed(q_state), d_o);
    q_state = at::Tensor();
    std::tie(G, d_initial) = ops.reverse_walk(K_d, W, d_states, s.decay, d_final_flat, s.starts);
    W = d_states = at::Tensor();
    d_u = product(transposed(scores), d_o);
    scores = at::Tensor();
    product.accumulate(d_u, K_d, G);
  }
  // A product meant only as another bf16 product's operand is written in bf16 (the rounding that product
  // makes as it loads it: the same result, half the traffic).
  const at::ScalarType operand_type =
      product.precision == GemmPrecision::Bf16 ? at::kBFloat16 : at::ScalarType::Undefined;
  at::Tensor d_w;
  at::Tensor S = as_operand(s.states), U = as_operand(s.u);  // the products' and the decays' operands
  // The gradients of q, k and v where the kernels write them (in the inputs' layout).
  [[maybe_unused]] const at::ScalarType grad_type = qkv_grad_type == at::kBFloat16 ? at::kBFloat16 : work;
  bool value_kernel = false;
#ifdef PRIME_WITH_CUDA
  // After the fused reverse walk dW, dT and dv are one kernel that reads dU once (value_side), once T is formed,
  // and dq and dk one kernel each (chain_rule_sums), as gdn_backward_sums says.
  const GdnBackwardSums sums_on = gdn_backward_sums();
  value_kernel = grams_in_kernels && sums_on != GdnBackwardSums::Products &&
                 detail::gdn_backward_value_apply(d_u, S, c.v, k);
#endif
  if (!value_kernel) d_w = product(d_u, transposed(S), -1.0, at::Tensor(), operand_type);
  if (!sums) c.d_q_decayed = product(d_o, transposed(S));  // d(diag(e^Gamma) Q)
  if (!c.d_chunk_decay.defined()) c.d_chunk_decay = chunk_decay_gradient(S, G, on_kernels);  // else the walk's
  if (!sums) {
    c.d_k_decayed = product(U, transposed(G));
    G = at::Tensor();
  }
  // d_scores = dO U^T: in the gates kernel from the rows where it forms its other operands and the last products
  // are kernels too (PRIME_GDN_BACKWARD_SUMS=kernels; the same bits as this product).
  bool scores_in_gates = false;
#ifdef PRIME_WITH_CUDA
  if (grams_in_kernels && sums_on == GdnBackwardSums::Kernels && U.is_contiguous() && U.numel() == q.numel()) {
    const at::Tensor u_rows = U.view(q.sizes());
    scores_in_gates = detail::gdn_backward_key_rows_apply(d_o, u_rows);
    if (scores_in_gates) c.d_o_rows = d_o, c.u_rows = u_rows;
  }
#endif
  if (!scores_in_gates) c.d_scores = product(d_o, transposed(U));
  if (!sums) S = U = at::Tensor();  // (fp32 copies for fp32 products: 1 GB each at (4,8192,32,128))
  c.chunk_decay = s.decay;

  // The solve: U' = T diag(beta) V, W = T diag(beta e^Gamma) K, T = (I + A)^-1.
  if (!grams_in_kernels) c.kk = product(k, transposed(k));
  at::Tensor inverse = s.inverse;
  // (a bf16 T, the bf16 forward's for bf16 products, is formed again in fp32 for fp32 ones)
  if (inverse.defined() && inverse.scalar_type() == at::kBFloat16 && operand_type != at::kBFloat16)
    inverse = at::Tensor();
  if (!inverse.defined() && grams_in_kernels) {
    inverse = ops.inverse_from_keys(k, c.g, c.beta, operand_type == at::kBFloat16 ? at::kBFloat16 : work);
  } else if (!inverse.defined() && on_kernels && ops.inverse_from_gram) {
    // T is read by products alone: in bf16 where they are bf16 (formed to TF32 accuracy, then rounded as
    // they would round it).
    inverse = ops.inverse_from_gram(c.kk, c.g, c.beta, operand_type == at::kBFloat16 ? at::kBFloat16 : work);
  } else if (!inverse.defined()) {
    const at::Tensor d = decay.defined() ? decay : decay_matrix(c.gamma64, work);
    inverse = ops.inverse((c.beta.unsqueeze(-1) * c.kk * d).tril_(-1));
  }
  // dT = dU (diag(beta) V)^T + dW (diag(beta e^Gamma) K)^T: the factors scale dT's columns.
  at::Tensor d_inverse, dv, v_dots;
#ifdef PRIME_WITH_CUDA
  if (value_kernel) {
    inverse = inverse.to(at::kBFloat16).contiguous();  // (a T the forward kept in fp32 rounded as products round it)
    ValueSide value = value_side(c, d_u, S, inverse, B, H, grad_type);
    d_w = value.d_w, d_inverse = value.d_inverse, dv = value.dv, v_dots = value.v_dots;
  }
#endif
  if (!value_kernel)
    d_inverse = product.sum(
        {GemmTerm{d_u, transposed(c.v), 1.0, c.beta}, GemmTerm{d_w, transposed(k), 1.0, c.beta * c.e_gamma}},
        operand_type);
  if (!sums) {
    c.d_v_in = product(transposed(inverse), d_u);
    c.d_k_in = product(transposed(inverse), d_w);
    d_w = d_u = at::Tensor();
  }
  // dA = -p (formed in the gates kernel where it forms the Gram products)
  if (grams_in_kernels)  // (a T the forward kept in fp32 rounded as the products would round it)
    c.inverse = inverse.to(at::kBFloat16).contiguous(), c.d_inverse = d_inverse.contiguous();
  else
    c.p = product(product(transposed(inverse), d_inverse, 1.0, at::Tensor(), operand_type), transposed(inverse));

  GdnChunkGrads grads;
  grads.state = d_initial.view({B, H, D, D});
#ifdef PRIME_WITH_CUDA
  if (sums) {  // in the inputs' layout
    const ChainGrads chain =
        chain_rule_sums(c, {d_o, S, U, G, inverse, d_w, d_u, dv, v_dots}, B, T, H, product, grad_type,
                        value_kernel && sums_on == GdnBackwardSums::Kernels);
    grads.q = chain.dq, grads.k = chain.dk, grads.v = chain.dv, grads.g = chain.dg, grads.beta = chain.d_beta;
    return grads;
  }
  if (on_kernels) {  // already in the inputs' layout
    const ChainGrads chain = chain_rule_kernels(c, B, T, H, product, grad_type);
    grads.q = chain.dq, grads.k = chain.dk, grads.v = chain.dv, grads.g = chain.dg, grads.beta = chain.d_beta;
    return grads;
  }
#endif
  c.q = chunk_major(c.q), c.k = chunk_major(c.k), c.v = chunk_major(c.v);  // its elementwise terms take [M,N,64,D]
  const ChainGrads chain = chain_rule_aten(c, decay, product);
  const at::ScalarType qkv = qkv_grad_type == at::ScalarType::Undefined ? work : qkv_grad_type;
  grads.q = from_chunks(chain.dq, B, T, H).to(qkv);
  grads.k = from_chunks(chain.dk, B, T, H).to(qkv);
  grads.v = from_chunks(chain.dv, B, T, H).to(qkv);
  grads.g = from_chunks(chain.dg, B, T, H);
  grads.beta = from_chunks(chain.d_beta, B, T, H);
  return grads;
}

}  // namespace prime::kernels
