// The autograd wrapper and dispatch of kernels/ssd_chunk. Forward: per chunk the local end state
// (a state product), the walk over chunks that turns them into the states entering each chunk
// (in place) and the final state, then the outputs (an in-chunk product). Backward, with dy and
// d_final:
//   dstart_n = dy_n^T diag(e^Gamma) C_n                       (a state product)
//   G = d_final; n = last..0: dlocal_n = G, G = dstart_n + a_n G; d_state = G    (the walk)
//   d a_n = <dlocal_n, start_n>
//   d(delta x) = S^T dy + diag(e^{Gamma_end - Gamma}) B dlocal^T, dx = delta d(delta x)
//   dC = (dS o L) B + diag(e^Gamma) dy start,  dB = (dS o L)^T C + diag(e^{Gamma_end - Gamma}) (delta x) dlocal
// (in-chunk products: d(delta x) on one launch; dC and dB, which share dS o L, on one launch where
// the tensor-core kernels serve, else two; S = (C B^T) o L, L_tj = e^{Gamma_t - Gamma_j} for j <= t,
// dS = dy (delta x)^T),
// and the gradient of Gamma from the row partials those products leave:
//   dGamma_t = sum_j dS_tj S_tj - sum_i dS_it S_it + dy_t . (e^{Gamma_t} C_t start^T) - q_t,
//   dGamma_end += sum_t q_t + a d a,   q_t = e^{Gamma_end - Gamma_t} (delta x)_t^T dlocal B_t,
// then d(delta A)_k = sum_{t >= k} dGamma_t within the chunk, d delta += d(delta A) A + x . d(delta x),
// dA = sum d(delta A) delta (torch ops over [B,H,T]: a fixed order, deterministic).
#include "kernels/ssd_chunk/ssd_chunk.h"

#include <torch/csrc/autograd/custom_function.h>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/ssd_chunk/ssd_chunk_launch.h"
#endif

namespace prime::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kChunk = kSsdKernelChunk;
#ifdef PRIME_WITH_CUDA
static_assert(kChunk == detail::kSsdChunk, "one chunk length for the launchers and the wrapper");
#endif
constexpr int64_t kMaxDim = 128;

int64_t chunks_of(int64_t T) { return (T + kChunk - 1) / kChunk; }
int64_t tiles_of(int64_t dim) { return (dim + 63) / 64; }

[[maybe_unused]] at::Tensor restart_flags(const at::Tensor& restart_or_empty) {
  return restart_or_empty.numel() > 0 ? restart_or_empty : at::Tensor();
}

// delta [B,T,H] -> [B,H,nC*64], zero past T.
at::Tensor padded_delta(const at::Tensor& delta, int64_t padded_length) {
  return at::constant_pad_nd(delta.permute({0, 2, 1}), {0, padded_length - delta.size(1)});
}

// Inputs as ssd_chunked takes them; state_or_empty: [B,H,P,N], or empty for zeros;
// restart_or_empty: [nC] bool, or empty for none (an undefined tensor cannot be an autograd input).
struct SsdChunkFunction : public torch::autograd::Function<SsdChunkFunction> {
  static variable_list forward(AutogradContext* context, const at::Tensor& x, const at::Tensor& delta,
                               const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                               const at::Tensor& state_or_empty, const at::Tensor& restart_or_empty) {
    require_cuda_build("ssd_chunked");
    const int64_t B = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), N = Bm.size(3);
    const int64_t num_chunks = chunks_of(T);
    const at::Tensor a = A.contiguous();
    const bool has_state = state_or_empty.numel() > 0;
    at::Tensor starts = new_output({B * H, num_chunks, P, N}, x.options());
    at::Tensor decay = new_output({B * H, num_chunks}, x.options());
    at::Tensor final_state = new_output({B * H, P * N}, x.options());
    at::Tensor y = new_output({B, T, H, P}, x.options());
#ifdef PRIME_WITH_CUDA
    detail::launch_ssd_chunk_states(x, Bm, delta, a, detail::SsdRowFactor::ToEnd, starts, decay);
    const at::Tensor initial = has_state ? state_or_empty.reshape({B * H, P * N}).contiguous() : at::Tensor();
    detail::launch_ssd_state_scan(starts.view({B * H, num_chunks, P * N}), decay, initial,
                                  restart_flags(restart_or_empty), /*reverse=*/false, final_state);
    detail::SsdMixOperands mix;
    mix.fa = Cm, mix.fb = Bm, mix.u = x, mix.u_delta = true, mix.state = starts;
    mix.factor = detail::SsdRowFactor::FromStart, mix.out = y;
    detail::launch_ssd_chunk_mix(mix, delta, a);
#endif
    context->save_for_backward({x, delta, a, Bm, Cm, starts, decay, restart_or_empty});
    context->saved_data["has_state"] = has_state;
    return {y, final_state.view({B, H, P, N})};
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor &x = saved[0], &delta = saved[1], &a = saved[2], &Bm = saved[3], &Cm = saved[4];
    const at::Tensor &starts = saved[5], &decay = saved[6], &restart_or_empty = saved[7];
    const bool has_state = context->saved_data["has_state"].toBool();
    const int64_t B = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), N = Bm.size(3);
    const int64_t num_chunks = chunks_of(T), padded = num_chunks * kChunk;
    const at::Tensor dy = grad_outputs[0].defined() ? grad_outputs[0] : at::zeros({B, T, H, P}, x.options());
    const at::Tensor d_final =
        grad_outputs[1].defined() ? grad_outputs[1].reshape({B * H, P * N}).contiguous() : at::Tensor();
    at::Tensor d_local = new_output({B * H, num_chunks, P, N}, x.options());
    at::Tensor d_state = new_output({B * H, P * N}, x.options());
    at::Tensor dx = new_output({B, T, H, P}, x.options());
    at::Tensor dB = new_output({B, T, H, N}, x.options());
    at::Tensor dC = new_output({B, T, H, N}, x.options());
    const auto partial = [&](int64_t dim) { return new_output({tiles_of(dim), B, H, padded}, x.options()); };
    at::Tensor x_full = partial(P), x_state = partial(P), x_pair = partial(P), c_state = partial(N);
    at::Tensor d_decay;  // <dlocal_n, start_n>, [B*H, nC]
#ifdef PRIME_WITH_CUDA
    // dstart_n, then the backward walk turns them into dlocal_n in place.
    detail::launch_ssd_chunk_states(dy, Cm, delta, a, detail::SsdRowFactor::FromStart, d_local, at::Tensor());
    detail::launch_ssd_state_scan(d_local.view({B * H, num_chunks, P * N}), decay, d_final,
                                  restart_flags(restart_or_empty), /*reverse=*/true, d_state);
    detail::SsdMixOperands for_x;  // d(delta x), dx, and the row partials of the Gamma gradient
    for_x.fa = Cm, for_x.fb = Bm, for_x.transpose = true, for_x.u = dy, for_x.v_is_fb = true;
    for_x.state = d_local, for_x.factor = detail::SsdRowFactor::ToEnd, for_x.aux = x;
    for_x.out = dx, for_x.out_delta = true;
    for_x.partial_full = x_full, for_x.partial_state = x_state, for_x.partial_pair = x_pair;
    detail::launch_ssd_chunk_mix(for_x, delta, a);
    if (detail::ssd_chunk_grad_bc_fused_apply(P, N)) {  // dC, dB, the state partial and d_decay in one launch
      detail::SsdGradBcOperands for_bc;
      for_bc.dy = dy, for_bc.x = x, for_bc.Bm = Bm, for_bc.Cm = Cm, for_bc.starts = starts, for_bc.d_local = d_local;
      for_bc.dB = dB, for_bc.dC = dC, for_bc.partial_state = c_state;
      for_bc.d_decay = d_decay = new_output({B * H, num_chunks}, x.options());
      detail::launch_ssd_chunk_grad_bc(for_bc, delta, a);
    } else {
      detail::SsdMixOperands for_c;  // dC and dy_t . (e^Gamma_t C_t start^T)
      for_c.fa = dy, for_c.fb = x, for_c.fb_delta = true, for_c.u = Bm, for_c.v_is_fb = false;
      for_c.state = starts, for_c.state_transposed = true, for_c.factor = detail::SsdRowFactor::FromStart;
      for_c.aux = Cm, for_c.out = dC, for_c.partial_state = c_state;
      detail::launch_ssd_chunk_mix(for_c, delta, a);
      detail::SsdMixOperands for_b;  // dB
      for_b.fa = dy, for_b.fb = x, for_b.fb_delta = true, for_b.transpose = true, for_b.u = Cm;
      for_b.v_is_fb = true, for_b.state = d_local, for_b.state_transposed = true;
      for_b.factor = detail::SsdRowFactor::ToEnd, for_b.out = dB;
      detail::launch_ssd_chunk_mix(for_b, delta, a);
    }
#else
    (void)Cm, (void)restart_or_empty;
#endif
    if (!d_decay.defined()) d_decay = (d_local * starts).sum({-1, -2});  // [B*H, nC]
    const at::Tensor delta_bht = padded_delta(delta, padded);                 // [B,H,nC*64]
    const at::Tensor q = (delta_bht * x_state.sum(0)).view({B, H, num_chunks, kChunk});
    at::Tensor d_gamma = (x_pair.sum(0) + c_state.sum(0)).view({B, H, num_chunks, kChunk}) - q;
    d_gamma.select(-1, kChunk - 1).add_(q.sum(-1) + (d_decay * decay).view({B, H, num_chunks}));
    // d(delta A)_k = sum_{t >= k} dGamma_t within the chunk.
    const at::Tensor d_log_decay =
        at::flip(at::cumsum(at::flip(d_gamma, {-1}), -1), {-1}).reshape({B, H, padded}).narrow(2, 0, T);
    const at::Tensor d_delta =
        (d_log_decay * a.view({1, H, 1}) + x_full.sum(0).narrow(2, 0, T)).permute({0, 2, 1});
    const at::Tensor dA = (d_log_decay * delta.permute({0, 2, 1})).sum(at::IntArrayRef{0, 2});
    return {dx, d_delta, dA.to(a.scalar_type()), dB, dC,
            has_state ? d_state.view({B, H, P, N}) : at::Tensor(), at::Tensor()};
  }
};

// The bf16 forward and its backward (ssd_chunk_launch.h): x, Bm, Cm cast to bf16 once (the
// forward's copies are what the backward reads), y in x's dtype or bf16 (bf16_out), the
// gradients of x, Bm and Cm in their dtype. Saves the states entering each chunk (bf16).
struct SsdChunkBf16Function : public torch::autograd::Function<SsdChunkBf16Function> {
  static variable_list forward(AutogradContext* context, const at::Tensor& x, const at::Tensor& delta,
                               const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                               const at::Tensor& state_or_empty, const at::Tensor& restart_or_empty, bool fp32_out) {
    require_cuda_build("ssd_chunked_bf16");
    const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), nC = chunks_of(T);
    const auto operand = [](const at::Tensor& t) { return contiguous_aligned(t.to(at::kBFloat16), 16); };
    const at::Tensor xb = operand(x), bb = operand(Bm), cb = operand(Cm), a = A.contiguous();
    const at::Tensor y = new_output({B, T, H, D}, x.options().dtype(fp32_out ? at::kFloat : at::kBFloat16));
    const at::Tensor final_state = new_output({B, H, D, D}, x.options().dtype(at::kFloat));
    const at::Tensor states = at::empty({B * H, nC, D, D}, x.options().dtype(at::kBFloat16));
    const bool has_state = state_or_empty.numel() > 0;
#ifdef PRIME_WITH_CUDA
    const at::Tensor initial =
        has_state ? contiguous_aligned(state_or_empty.reshape({B * H, D, D}), 32) : at::Tensor();
    detail::launch_ssd_forward_bf16(xb, delta, a, bb, cb, initial, restart_flags(restart_or_empty), states,
                                    final_state.view({B * H, D, D}), y);
#endif
    context->save_for_backward({xb, delta, a, bb, cb, states, restart_or_empty});
    context->saved_data["has_state"] = has_state;
    context->saved_data["type"] = static_cast<int64_t>(x.scalar_type());
    return {y, final_state};
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const variable_list saved = context->get_saved_variables();
    detail::SsdBackwardBf16Operands o;
    o.x = saved[0], o.delta = saved[1], o.A = saved[2], o.Bm = saved[3], o.Cm = saved[4], o.states = saved[5];
    o.restart = restart_flags(saved[6]);
    const bool has_state = context->saved_data["has_state"].toBool();
    const auto type = static_cast<at::ScalarType>(context->saved_data["type"].toInt());
    const int64_t B = o.x.size(0), T = o.x.size(1), H = o.x.size(2), D = o.x.size(3), nC = chunks_of(T);
    const auto options = o.x.options();
    o.dy = grad_outputs[0].defined() ? contiguous_aligned(grad_outputs[0].to(at::kBFloat16), 16)
                                     : at::zeros({B, T, H, D}, options);
    if (grad_outputs[1].defined())
      o.d_final = contiguous_aligned(grad_outputs[1].to(at::kFloat).reshape({B * H, D, D}), 32);
    o.d_locals = at::empty({B * H, nC, D, D}, options);
    o.d_state = new_output({B * H, D, D}, options.dtype(at::kFloat));
    for (at::Tensor* grad : {&o.dx, &o.dB, &o.dC}) *grad = new_output({B, T, H, D}, options.dtype(type));
    o.d_delta = new_output({B, T, H}, options.dtype(at::kFloat));
    o.dA_part = new_output({B * H, nC}, options.dtype(at::kFloat));
#ifdef PRIME_WITH_CUDA
    detail::launch_ssd_backward_bf16(o);
#endif
    const at::Tensor dA = o.dA_part.view({B, H, nC}).sum(at::IntArrayRef{0, 2});
    return {o.dx, o.d_delta, dA, o.dB, o.dC, has_state ? o.d_state.view({B, H, D, D}) : at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

bool fp32_cuda_on(const at::Tensor& tensor, const at::Device& device) {
  return tensor.defined() && tensor.is_cuda() && tensor.device() == device && tensor.scalar_type() == at::kFloat;
}

}  // namespace

bool ssd_chunk_kernels_apply(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                             const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state) {
  if (!use_cuda_kernels(x) || x.dim() != 4 || delta.dim() != 3 || A.dim() != 1 || Bm.dim() != 4 ||
      Cm.sizes() != Bm.sizes())
    return false;
  const at::Device device = x.device();
  for (const at::Tensor* tensor : {&x, &delta, &A, &Bm, &Cm})
    if (!fp32_cuda_on(*tensor, device)) return false;
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), N = Bm.size(3);
  if (delta.sizes() != at::IntArrayRef{B, T, H} || A.size(0) != H || Bm.size(0) != B || Bm.size(1) != T ||
      Bm.size(2) != H)
    return false;
  if (state.defined() && (!fp32_cuda_on(state, device) || state.sizes() != at::IntArrayRef{B, H, P, N}))
    return false;
  return T >= 1 && B * H >= 1 && B * H <= 65535 && P >= 1 && P <= kMaxDim && N >= 1 && N <= kMaxDim;
}

bool chunk_state_walk_apply(const at::Tensor& buffer) {
  return use_cuda_kernels(buffer) && buffer.scalar_type() == at::kFloat && buffer.dim() == 3 &&
         buffer.is_contiguous() && buffer.size(0) >= 1 && buffer.size(0) <= 65535 && buffer.size(1) >= 1 &&
         buffer.size(2) >= 1 && buffer.size(2) < (int64_t{1} << 30);
}

void chunk_state_walk(const at::Tensor& buffer, const at::Tensor& decay, const at::Tensor& initial,
                      const at::Tensor& restart, bool reverse, const at::Tensor& final_state) {
  require_cuda_build("chunk_state_walk");
  PRIME_CHECK(chunk_state_walk_apply(buffer), "chunk_state_walk: a buffer it does not serve (", buffer.sizes(), ")");
#ifdef PRIME_WITH_CUDA
  detail::launch_ssd_state_scan(buffer, decay, initial, restart, reverse, final_state);
#endif
}

bool ssd_chunk_bf16_apply(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                          const at::Tensor& Cm, const at::Tensor& state) {
  if (!use_cuda_kernels(x) || x.dim() != 4 || Bm.sizes() != x.sizes() || Cm.sizes() != x.sizes()) return false;
  const at::ScalarType type = x.scalar_type();
  if ((type != at::kBFloat16 && type != at::kFloat) || Bm.scalar_type() != type || Cm.scalar_type() != type)
    return false;
  const at::Device device = x.device();
  for (const at::Tensor* tensor : {&Bm, &Cm})
    if (tensor->device() != device) return false;
  for (const at::Tensor* tensor : {&delta, &A})
    if (!fp32_cuda_on(*tensor, device)) return false;
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  if (delta.sizes() != at::IntArrayRef{B, T, H} || A.dim() != 1 || A.size(0) != H) return false;
  if (state.defined() && (!fp32_cuda_on(state, device) || state.sizes() != at::IntArrayRef{B, H, D, D})) return false;
  return (D == 32 || D == 64 || D == 128) && T >= 1 && B * H >= 1 && B * H <= 65535 && chunks_of(T) <= 65535;
}

std::pair<at::Tensor, at::Tensor> ssd_chunked_bf16(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                                                   const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state,
                                                   const at::Tensor& restart, at::ScalarType out_type) {
  require_cuda_build("ssd_chunked_bf16");
  PRIME_CHECK(ssd_chunk_bf16_apply(x, delta, A, Bm, Cm, state),
              "ssd_chunked_bf16: operands it does not serve (x ", x.sizes(), " ", x.scalar_type(), ")");
  PRIME_CHECK(out_type == at::kFloat || out_type == at::kBFloat16, "ssd_chunked_bf16: the output is fp32 or bf16");
  const int64_t nC = chunks_of(x.size(1));
  PRIME_CHECK(!restart.defined() || (restart.dim() == 1 && restart.size(0) == nC &&
                                     restart.scalar_type() == at::kBool && restart.device() == x.device()),
              "ssd_chunked_bf16: restart must be [", nC, "] bool on ", x.device());
  const at::Tensor state_or_empty = state.defined() ? state : at::empty({0}, x.options().dtype(at::kFloat));
  const at::Tensor restart_or_empty =
      restart.defined() ? restart.contiguous() : at::empty({0}, x.options().dtype(at::kBool));
  variable_list outputs = SsdChunkBf16Function::apply(x, delta, A, Bm, Cm, state_or_empty, restart_or_empty,
                                                      out_type == at::kFloat);
  return {outputs[0], outputs[1]};
}

std::pair<at::Tensor, at::Tensor> ssd_chunked(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                                              const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state,
                                              const at::Tensor& restart) {
  PRIME_CHECK(ssd_chunk_kernels_apply(x, delta, A, Bm, Cm, state),
              "ssd_chunked kernels: operands they do not serve (x ", x.sizes(), ", Bm ", Bm.sizes(), ")");
  PRIME_CHECK(!restart.defined() || (restart.dim() == 1 && restart.size(0) == chunks_of(x.size(1)) &&
                                     restart.scalar_type() == at::kBool && restart.device() == x.device()),
              "ssd_chunked kernels: restart must be [", chunks_of(x.size(1)), "] bool on ", x.device(), " (one flag per ",
              kChunk, "-step chunk)");
  const at::Tensor state_or_empty = state.defined() ? state : at::empty({0}, x.options());
  const at::Tensor restart_or_empty =
      restart.defined() ? restart.contiguous() : at::empty({0}, x.options().dtype(at::kBool));
  variable_list outputs = SsdChunkFunction::apply(x, delta, A, Bm, Cm, state_or_empty, restart_or_empty);
  return {outputs[0], outputs[1]};
}

}  // namespace prime::kernels
