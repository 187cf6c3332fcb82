// Autograd wrappers of kernels/gdn_chunk. The backward of each op is written out here: the
// inverse's in two matmuls, the scan's as the same scan kernel walking the chunks backwards
// (the adjoint recurrence has the scan's shape) plus batched matmuls.
#include "kernels/gdn_chunk/gdn_chunk.h"

#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/common/switches.h"
#include "kernels/gdn_chunk/gdn_chunk_backward.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/gdn_chunk/gdn_chunk_launch.h"
#endif

namespace prime::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kForwardChunk = 64;  // the fused forward's chunk (kGdnForwardChunk)

at::Tensor inverse_forward(const at::Tensor& A) {
  require_cuda_build("unit_lower_inverse");
  const int64_t chunk = A.size(-1);
  const at::Tensor flat = A.reshape({-1, chunk, chunk}).contiguous();
  at::Tensor T = new_output(flat.sizes(), flat.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_unit_lower_inverse(flat, T);
#endif
  return T.view(A.sizes());
}

// states/final of one walk of the scan (see gdn_chunk_launch.h), batch dims flattened.
std::pair<at::Tensor, at::Tensor> scan(const at::Tensor& probe, const at::Tensor& writer,
                                       const at::Tensor& target, const at::Tensor& addend,
                                       const at::Tensor& decay, const at::Tensor& initial,
                                       const at::Tensor& starts, bool reverse, int64_t value_dim) {
  require_cuda_build("chunk_state_scan");
  const int64_t M = probe.size(0), N = probe.size(1), Dk = probe.size(3);
  at::Tensor states = new_output({M, N, Dk, value_dim}, probe.options());
  at::Tensor final_state = new_output({M, Dk, value_dim}, probe.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_chunk_scan(probe, writer, target, addend, decay, initial, starts, reverse, states,
                            final_state);
#else
  (void)target, (void)addend, (void)decay, (void)initial, (void)starts, (void)reverse;
#endif
  return {states, final_state};
}

// An optional autograd input (the state, the chunk starts) passed as an empty tensor for none.
at::Tensor optional(const at::Tensor& tensor_or_empty) {
  return tensor_or_empty.numel() > 0 ? tensor_or_empty : at::Tensor();
}

at::Tensor flat_or_undefined(const at::Tensor& tensor, int64_t keep_dims) {
  if (!tensor.defined()) return tensor;
  std::vector<int64_t> shape{-1};
  for (int64_t dim = tensor.dim() - keep_dims; dim < tensor.dim(); ++dim) shape.push_back(tensor.size(dim));
  return tensor.reshape(shape).contiguous();
}

struct UnitLowerInverse : public torch::autograd::Function<UnitLowerInverse> {
  static at::Tensor forward(AutogradContext* context, const at::Tensor& A) {
    at::Tensor T = inverse_forward(A);
    context->save_for_backward({T});
    return T;
  }
  // dT -> dA = -T^T dT T^T, on the strictly lower triangle the forward read.
  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const at::Tensor T = context->get_saved_variables()[0];
    const at::Tensor Tt = T.transpose(-1, -2);
    return {(-at::matmul(at::matmul(Tt, grad_outputs[0]), Tt)).tril(-1)};
  }
};

// Inputs flattened to [M, N, ...]; the caller restores the batch dims. starts: [N] bool, or
// empty for none (an undefined tensor cannot be an autograd input).
struct ChunkStateScan : public torch::autograd::Function<ChunkStateScan> {
  static variable_list forward(AutogradContext* context, const at::Tensor& w,
                               const at::Tensor& k_decayed, const at::Tensor& u_local,
                               const at::Tensor& decay, const at::Tensor& initial,
                               const at::Tensor& starts_or_empty) {
    const at::Tensor starts = optional(starts_or_empty);
    auto [states, final_state] = scan(w, k_decayed, u_local, at::Tensor(), decay, initial, starts,
                                      /*reverse=*/false, u_local.size(3));
    context->save_for_backward({w, k_decayed, u_local, decay, states, starts_or_empty});
    return {states, final_state};
  }

  // With G_n the gradient reaching S_{n+1} (from S_{n+1}'s own uses and through the recurrence):
  //   G_{n-1} = dstates_n + decay_n G_n - w_n^T (k_decayed_n G_n),   G_{N-1} = dfinal
  // the scan walked backwards with probe = k_decayed, writer = w, addend = dstates. Then per
  // chunk: du_n = k_decayed_n G_n, dk_decayed_n = U_n G_n^T, dw_n = -du_n S_n^T,
  // ddecay_n = <S_n, G_n>, dinitial = the walk's final value. A reset S_n = 0 stops the walk's
  // G there (G_{n-1} = 0), and S_n = 0 in the products above.
  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor &w = saved[0], &k_decayed = saved[1], &u_local = saved[2], &decay = saved[3];
    const at::Tensor& states = saved[4];
    const at::Tensor starts = optional(saved[5]);
    const at::Tensor d_states = grad_outputs[0].defined() ? grad_outputs[0].contiguous() : at::Tensor();
    const at::Tensor d_final = grad_outputs[1].defined() ? grad_outputs[1].contiguous() : at::Tensor();
    auto [gradients, d_initial] =
        scan(k_decayed, w, at::Tensor(), d_states, decay, d_final, starts, /*reverse=*/true, u_local.size(3));
    const at::Tensor U = u_local - at::matmul(w, states);
    const at::Tensor d_u = at::matmul(k_decayed, gradients);
    const at::Tensor d_k_decayed = at::matmul(U, gradients.transpose(-1, -2));
    const at::Tensor d_w = -at::matmul(d_u, states.transpose(-1, -2));
    const at::Tensor d_decay = (states * gradients).sum({-1, -2});
    return {d_w, d_k_decayed, d_u, d_decay, d_initial, at::Tensor()};
  }
};

}  // namespace

bool gdn_bf16_wgmma_walk_runs(int64_t head_dim, const at::Device& device) {
#ifdef PRIME_WITH_CUDA
  return device.is_cuda() && detail::gdn_forward_bf16_walk_wgmma_runs(head_dim, device);
#else
  (void)head_dim, (void)device;
  return false;
#endif
}

bool gdn_chunk_kernels_apply(const at::Tensor& q, int64_t chunk_size) {
  const int64_t dim = q.size(-1);
  if (!use_cuda_kernels(q) || q.scalar_type() != at::kFloat || chunk_size > 64 ||
      !(dim == 32 || dim == 64 || dim == 128 || dim == 256))
    return false;
#ifdef PRIME_WITH_CUDA
  return detail::chunk_scan_fits_device(dim, q.get_device());  // else the torch form
#else
  return true;
#endif
}

namespace {

// PRIME_GDN_FUSED_FORWARD=0: the composite form everywhere (read at each call: tests and timings
// switch it).
bool fused_forward_opted_out() {
  return environment_switch<bool>("PRIME_GDN_FUSED_FORWARD", {{"1", false, "the fused forward where it serves"},
                                                              {"0", true, "the composite form"}});
}

// Whether the fused forward's kernels serve these operands, gradients aside (gdn_chunk.h).
bool fused_form_serves(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                       const at::Tensor& beta, const at::Tensor& state, int64_t chunk_size,
                       const at::Tensor& chunk_starts) {
  if (fused_forward_opted_out() || !use_cuda_kernels(q) || q.dim() != 4 || v.size(-1) != q.size(-1)) return false;
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  const int64_t dim = q.size(-1);
  if (bf16 ? !(dim == 32 || dim == 64 || dim == 128) : !gdn_chunk_kernels_apply(q, chunk_size)) return false;
  if (chunk_size > 64 || (chunk_starts.defined() && chunk_size != 64)) return false;
  if (q.size(0) * q.size(2) > 65535) return false;
#ifdef PRIME_WITH_CUDA
  if (!bf16 && !detail::gdn_forward_fits_device(dim, q.get_device())) return false;  // the composite form
#endif
  // fp32 throughout, or bf16 q, k, v with fp32 gates and state; any other mix, or an operand on
  // another device, keeps the composite (or torch-ops) form.
  const auto wanted = [&](const at::Tensor* operand) {
    return operand == &q || operand == &k || operand == &v ? q.scalar_type() : at::kFloat;
  };
  for (const at::Tensor* operand : {&q, &k, &v, &g, &beta, &state})
    if (operand->defined() && (operand->scalar_type() != wanted(operand) || operand->device() != q.device()))
      return false;
  return true;
}

}  // namespace

bool gdn_chunk_forward_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                             const at::Tensor& beta, const at::Tensor& state, int64_t chunk_size,
                             const at::Tensor& chunk_starts) {
  for (const at::Tensor* operand : {&q, &k, &v, &g, &beta, &state})
    if (records_gradient(*operand)) return false;
  return fused_form_serves(q, k, v, g, beta, state, chunk_size, chunk_starts);
}

bool gdn_chunk_fused_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                           const at::Tensor& beta, const at::Tensor& state, int64_t chunk_size,
                           const at::Tensor& chunk_starts) {
  return q.scalar_type() == at::kFloat && fused_form_serves(q, k, v, g, beta, state, chunk_size, chunk_starts);
}

bool gdn_chunk_fused_bf16_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                const at::Tensor& beta, const at::Tensor& state, int64_t chunk_size,
                                const at::Tensor& chunk_starts) {
  const int64_t dim = q.size(-1);
  return (q.scalar_type() == at::kBFloat16 || (q.scalar_type() == at::kFloat && dim <= 128)) &&
         fused_form_serves(q, k, v, g, beta, state, chunk_size, chunk_starts);
}

namespace {


// The fused forwards' per-chunk scratch for q [B,T,H,D]: w, u (U', then U_n), k_decayed
// [M,N,64,D] and states [M,N,D,D] in q's dtype, decay [M,N] fp32.
struct ForwardScratch {
  at::Tensor w, u, k_decayed, decay, states;
  at::Tensor inverse;  // [M,N,64,64], fp32 training only
};
ForwardScratch forward_scratch(const at::Tensor& q) {
  const int64_t M = q.size(0) * q.size(2), D = q.size(3), N = (q.size(1) + kForwardChunk - 1) / kForwardChunk;
  return {new_output({M, N, kForwardChunk, D}, q.options()), new_output({M, N, kForwardChunk, D}, q.options()),
          new_output({M, N, kForwardChunk, D}, q.options()), new_output({M, N}, q.options().dtype(at::kFloat)),
          new_output({M, N, D, D}, q.options()), at::Tensor()};
}

// Which walk GDN's bf16 forward takes after prep.
enum class Bf16Walk { split, fused, fused_wgmma };

// PRIME_GDN_FORWARD_WALK (read at each call): "fused" (the bf16 forward's scan and output in one
// kernel), "split" (two kernels, the states entering each chunk written between them), "wgmma"
// (the fused walk on Hopper's warpgroup MMAs, head dim 128: the fused walk's output bit for bit, 1.07x
// faster at (4,8192,32,128) on an H100); unset, the fused walk where its block fits the device's shared
// memory and its blocks, one per batch and head, fill the GPU (gdn_forward_bf16_walk_preferred), on the
// warpgroup MMAs where they run, else split.
Bf16Walk bf16_walk(const at::Tensor& q) {
  const char* value = std::getenv("PRIME_GDN_FORWARD_WALK");
  const std::string text = value ? value : "";
#ifdef PRIME_WITH_CUDA
  const int64_t D = q.size(-1);
  const int device = q.is_cuda() ? q.get_device() : -1;
  const bool fits = device >= 0 && detail::gdn_forward_bf16_walk_fits_device(D, device);
  // The probe behind it synchronises once per device (not inside a CUDA-graph capture: there it answers
  // no until it has run outside one): asked only where the fused walk is wanted.
  const auto wgmma_runs = [&] { return device >= 0 && detail::gdn_forward_bf16_walk_wgmma_runs(D, q.device()); };
  if (text.empty()) {
    if (!fits || !detail::gdn_forward_bf16_walk_preferred(q.size(0) * q.size(2), D, device)) return Bf16Walk::split;
    return wgmma_runs() ? Bf16Walk::fused_wgmma : Bf16Walk::fused;
  }
#else
  const bool fits = false;
  const auto wgmma_runs = [] { return false; };
  if (text.empty()) return Bf16Walk::split;
#endif
  if (text == "split") return Bf16Walk::split;
  if (text == "fused") {
    if (!fits)
      throw user_error("PRIME_GDN_FORWARD_WALK=fused: the fused walk's block for head dim ", q.size(-1),
                       " does not fit this GPU's shared memory; unset it or use \"split\"");
    return Bf16Walk::fused;
  }
  if (text == "wgmma") {
    if (!wgmma_runs())
      throw user_error("PRIME_GDN_FORWARD_WALK=wgmma: the fused walk on the warpgroup MMAs needs head dim 128 (got ",
                       q.size(-1), ") on a Hopper GPU running this build's sm_90a code (inside a CUDA-graph capture ",
                       "that cannot be asked before the device's first run outside one); unset it or use \"fused\" ",
                       "or \"split\"");
    return Bf16Walk::fused_wgmma;
  }
  throw user_error("PRIME_GDN_FORWARD_WALK=", text, ": must be \"fused\" (GDN's bf16 forward walks the chunks and ",
                   "writes the output in one kernel), \"split\" (a scan, then the output) or \"wgmma\" (the fused ",
                   "walk on Hopper's warpgroup MMAs); unset, the fused walk (\"wgmma\" where it runs) where its block ",
                   "fits the GPU's shared memory and batch x heads fills at least 60% of its SMs");
}

// The bf16 operands' fused forward (gdn_forward_bf16_kernels.cu) into o (bf16) and final_state (fp32).
// Returns its scratch. for_backward keeps what the written-out backward reads (W, U_n, the chunk decays,
// the states entering each chunk) and forms W and U' with (I + A)^-1 split into hi + lo: on the warpgroup
// MMAs' fused walk where PRIME_GDN_FORWARD_WALK gives that walk (it keeps them as it walks; no K_d, which
// only the backward's split walk reads and then forms), else on the split walk (K_d too).
struct Bf16Scratch {
  at::Tensor w, u, k_decayed, decay, states, inverse;
};
Bf16Scratch forward_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                         const at::Tensor& beta, const at::Tensor& state, const at::Tensor& chunk_starts,
                         const at::Tensor& o, const at::Tensor& final_state, bool for_backward = false) {
  const int64_t M = q.size(0) * q.size(2), D = q.size(3), N = (q.size(1) + kForwardChunk - 1) / kForwardChunk;
#ifdef PRIME_WITH_CUDA
  detail::GdnForwardBf16Scratch scratch;
  scratch.w = new_output({M, N, kForwardChunk, D}, q.options());
  scratch.u = new_output({M, N, kForwardChunk, D}, q.options());
  const Bf16Walk asked = bf16_walk(q);
  const Bf16Walk walk = for_backward && asked != Bf16Walk::fused_wgmma ? Bf16Walk::split : asked;
  scratch.split_inverse = for_backward;  // experiments/gdn_bf16_backward: the decay parameters' gradient
  // T rounded to bf16 for a backward whose products are bf16 (they round it so as they load it): prep has it.
  if (for_backward && gdn_bf16_backward_products() == GemmPrecision::Bf16)
    scratch.inverse = new_output({M, N, kForwardChunk, kForwardChunk}, q.options());
  if (walk != Bf16Walk::split) {
    scratch.gamma = new_output({M, N, kForwardChunk}, q.options().dtype(at::kDouble));
    scratch.walk_wgmma = walk == Bf16Walk::fused_wgmma;
    if (for_backward) {
      scratch.decay = new_output({M, N}, q.options().dtype(at::kFloat));
      scratch.states = new_output({M, N, D, D}, q.options());
    }
  } else {
    scratch.k_decayed = new_output({M, N, kForwardChunk, D}, q.options());
    scratch.decay = new_output({M, N}, q.options().dtype(at::kFloat));
    scratch.states = new_output({M, N, D, D}, q.options());
  }
  detail::launch_gdn_forward_bf16(contiguous_aligned(q, 16), contiguous_aligned(k, 16), contiguous_aligned(v, 16),
                                  g.contiguous(), beta.contiguous(), contiguous_aligned(flat_or_undefined(state, 2), 32),
                                  chunk_starts.defined() ? chunk_starts.contiguous() : chunk_starts, scratch,
                                  final_state.view({M, D, D}), o);
  return {scratch.w, scratch.u, scratch.k_decayed, scratch.decay, scratch.states, scratch.inverse};
#else
  (void)k, (void)v, (void)g, (void)beta, (void)state, (void)chunk_starts, (void)o, (void)final_state, (void)M, (void)D,
      (void)N, (void)for_backward;
  (void)bf16_walk;
  return {};
#endif
}

}  // namespace

namespace {

// The fp32 fused forward: prep, scan (which writes U_n over U'), output. Returns its scratch,
// with each chunk's (I + A)^-1 where `keep_inverse` (training).
ForwardScratch forward_fp32(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                            const at::Tensor& beta, const at::Tensor& state, const at::Tensor& chunk_starts,
                            const at::Tensor& o, const at::Tensor& final_state, bool keep_inverse = false) {
  const int64_t M = q.size(0) * q.size(2), D = q.size(3);
  ForwardScratch s = forward_scratch(q);
  if (keep_inverse) s.inverse = new_output({M, s.decay.size(1), kForwardChunk, kForwardChunk}, q.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_gdn_forward_prep(k, v, g, beta, s.w, s.u, s.k_decayed, s.decay, s.inverse);
  detail::launch_chunk_scan(s.w, s.k_decayed, s.u, at::Tensor(), s.decay, flat_or_undefined(state, 2), chunk_starts,
                            /*reverse=*/false, s.states, final_state.view({M, D, D}), /*y_out=*/s.u);
  detail::launch_gdn_forward_output(q, k, g, s.u, s.states, o);
#else
  (void)k, (void)v, (void)g, (void)beta, (void)state, (void)chunk_starts, (void)o, (void)final_state, (void)M, (void)D;
#endif
  return s;
}

// Shapes every fused entry point checks. Returns N, the number of 64-step chunks.
int64_t check_fused_operands(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& g, const at::Tensor& beta, const at::Tensor& state,
                             const at::Tensor& chunk_starts) {
  require_cuda_build(op);
  PRIME_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes() && g.dim() == 3 &&
                  beta.sizes() == g.sizes(),
              op, ": q, k, v [B,T,H,D] and g, beta [B,T,H], got ", q.sizes(), ", ", g.sizes());
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t N = (T + kForwardChunk - 1) / kForwardChunk;
  PRIME_CHECK(!chunk_starts.defined() || (chunk_starts.dim() == 1 && chunk_starts.size(0) == N),
              op, ": chunk_starts must be [", N, "] for 64-step chunks");
  PRIME_CHECK(!state.defined() || state.sizes() == at::IntArrayRef({B, H, D, D}),
              op, ": state must be [", B, ", ", H, ", ", D, ", ", D, "], got ", state.sizes());
  return N;
}

// The CUDA pieces of the written-out backward (gdn_chunk_backward.h).
GdnChunkBackwardOps cuda_backward_ops() {
  GdnChunkBackwardOps ops;
  ops.reverse_walk = [](const at::Tensor& k_decayed, const at::Tensor& w, const at::Tensor& d_states,
                        const at::Tensor& decay, const at::Tensor& d_final, const at::Tensor& starts) {
    return scan(k_decayed, w, at::Tensor(), d_states, decay, d_final, starts, /*reverse=*/true, w.size(3));
  };
  ops.inverse = [](const at::Tensor& A) { return inverse_forward(A); };
#ifdef PRIME_WITH_CUDA
  ops.inverse_from_gram = [](const at::Tensor& kk, const at::Tensor& g, const at::Tensor& beta,
                             at::ScalarType type) {
    const int64_t chunk = kk.size(-1);
    const at::Tensor flat_kk = contiguous_aligned(kk.reshape({-1, chunk, chunk}), 16);
    at::Tensor T = new_output(flat_kk.sizes(), flat_kk.options().dtype(type));
    detail::launch_gdn_backward_inverse(flat_kk, g.reshape({-1, chunk}).contiguous(),
                                        beta.reshape({-1, chunk}).contiguous(), T);
    return T.view(kk.sizes());
  };
  ops.inverse_from_keys = [](const at::Tensor& k, const at::Tensor& g, const at::Tensor& beta, at::ScalarType type) {
    const int64_t chunk = k.size(-2);
    at::Tensor T = new_output({k.size(0) * k.size(1) * k.size(2), chunk, chunk}, k.options().dtype(type));
    detail::launch_gdn_backward_inverse_from_rows(k, g.reshape({-1, chunk}).contiguous(),
                                                  beta.reshape({-1, chunk}).contiguous(), T);
    return T.view({k.size(0) * k.size(1), k.size(2), chunk, chunk});
  };
#endif
  return ops;
}

// The fused reverse walk on the bf16 forward's results (GdnChunkBackwardOps::fused_walk): d_out rounded
// to bf16 (the walk's products read it so), the rest as the forward saved it.
GdnFusedWalk fused_walk_bf16(const GdnChunkSaved& s, const at::Tensor& gamma, const at::Tensor& d_out,
                             const at::Tensor& d_final) {
#ifdef PRIME_WITH_CUDA
  const int64_t M = s.w.size(0), N = s.w.size(1), D = s.w.size(3);
  detail::GdnBackwardWalkBf16 walk;
  walk.q = s.q, walk.k = s.k, walk.w = s.w, walk.gamma = gamma.contiguous(), walk.d_final = d_final;
  walk.starts = s.starts, walk.states = s.states.to(at::kBFloat16).contiguous();
  walk.d_out = d_out.defined() ? contiguous_aligned(d_out.to(at::kBFloat16), 16) : at::zeros_like(s.q);
  const at::TensorOptions fp32 = s.q.options().dtype(at::kFloat), bf16 = s.q.options().dtype(at::kBFloat16);
  walk.grads_after = new_output({M, N, D, D}, bf16);
  walk.d_u = new_output({M, N, kForwardChunk, D}, bf16);
  walk.d_initial = new_output({M, D, D}, fp32);
  walk.d_chunk_decay = new_output({M, N}, fp32);
  detail::launch_gdn_backward_walk_bf16(walk);
  return {walk.grads_after, walk.d_u, walk.d_initial, walk.d_chunk_decay};
#else
  (void)s, (void)gamma, (void)d_out, (void)d_final;
  return {};
#endif
}

// The fused autograd functions' backward: gdn_chunk_backward on what their forward saved, {q, k, v,
// g, beta, w, u, k_decayed, decay, states, starts_or_empty} and each chunk's (I + A)^-1 where kept,
// with the state's gradient where the forward had one; q's, k's and v's gradients in `leaves`, their
// leaves' dtype.
variable_list fused_backward(AutogradContext* context, const variable_list& grad_outputs, at::ScalarType leaves) {
  const variable_list saved = context->get_saved_variables();
  const GdnChunkSaved s{saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
                        saved[6], saved[7], saved[8], saved[9], saved.size() > 11 ? saved[11] : at::Tensor(),
                        optional(saved[10])};
  GdnChunkBackwardOps ops = cuda_backward_ops();
#ifdef PRIME_WITH_CUDA
  const GdnBackwardWalk walk = s.q.scalar_type() == at::kBFloat16 ? gdn_bf16_backward_walk() : GdnBackwardWalk::Split;
  if (walk != GdnBackwardWalk::Split) {
    const bool bf16_products = gdn_bf16_backward_products() == GemmPrecision::Bf16;
    const bool fits = detail::gdn_backward_walk_bf16_fits_device(s.q.size(3), s.q.get_device());
    if (walk == GdnBackwardWalk::Fused && !bf16_products)
      throw user_error("PRIME_GDN_BACKWARD_WALK=fused multiplies on bf16 operands: it does not go with ",
                       "PRIME_GDN_BACKWARD_PRODUCTS=fp32");
    if (walk == GdnBackwardWalk::Fused && !fits)
      throw user_error("PRIME_GDN_BACKWARD_WALK=fused: the fused reverse walk's block for head dim ", s.q.size(3),
                       " does not fit this GPU's shared memory");
    if (bf16_products && fits) ops.fused_walk = fused_walk_bf16;
  }
#endif
  const GdnChunkGrads grads = gdn_chunk_backward(s, grad_outputs[0], grad_outputs[1], ops, leaves);
  const bool has_state = context->saved_data["has_state"].toBool();
  return {grads.q.to(leaves), grads.k.to(leaves), grads.v.to(leaves), grads.g, grads.beta,
          has_state ? grads.state : at::Tensor(), at::Tensor()};
}

// Training on the fused forward: it saves the kernels' per-chunk results, and the backward is
// gdn_chunk_backward with the scan kernel walking backwards. state and starts: empty for none
// (an undefined tensor cannot be an autograd input).
struct GdnChunkFused : public torch::autograd::Function<GdnChunkFused> {
  static variable_list forward(AutogradContext* context, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
                               const at::Tensor& state_or_empty, const at::Tensor& starts_or_empty) {
    const at::Tensor state = optional(state_or_empty), starts = optional(starts_or_empty);
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3);
    at::Tensor o = new_output({B, T, H, D}, q.options());
    at::Tensor final_state = new_output({B, H, D, D}, q.options());
    const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
    const at::Tensor gc = g.contiguous(), bc = beta.contiguous();
    const ForwardScratch s = forward_fp32(qc, kc, vc, gc, bc, state, starts, o, final_state, /*keep_inverse=*/true);
    context->save_for_backward(
        {qc, kc, vc, gc, bc, s.w, s.u, s.k_decayed, s.decay, s.states, starts_or_empty, s.inverse});
    context->saved_data["has_state"] = state.defined();
    return {o, final_state};
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    return fused_backward(context, grad_outputs, at::kFloat);
  }
};

// Training on the bf16 forward: q, k, v bf16, or fp32 ones rounded to bf16 here (the output then fp32
// too, its gradient taken in fp32 and the inputs' gradients returned in fp32: no rounding beyond the
// forward's own); g, beta and the state fp32. The forward keeps its bf16 per-chunk results (forward_bf16's
// for_backward: on the warpgroup walk where it runs, else the split walk); the backward is
// gdn_chunk_backward on them, in fp32, with each chunk's (I + A)^-1 as prep formed it, rounded to bf16 for
// bf16 products (else formed again in the backward, in fp32).
struct GdnChunkFusedBf16 : public torch::autograd::Function<GdnChunkFusedBf16> {
  static variable_list forward(AutogradContext* context, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
                               const at::Tensor& state_or_empty, const at::Tensor& starts_or_empty) {
    const at::Tensor state = optional(state_or_empty), starts = optional(starts_or_empty);
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3);
    const auto bf16 = [](const at::Tensor& x) { return contiguous_aligned(x.to(at::kBFloat16), 16); };
    const at::Tensor qc = bf16(q), kc = bf16(k), vc = bf16(v), gc = g.contiguous(), bc = beta.contiguous();
    at::Tensor o = new_output({B, T, H, D}, qc.options());
    at::Tensor final_state = new_output({B, H, D, D}, q.options().dtype(at::kFloat));
    const Bf16Scratch s = forward_bf16(qc, kc, vc, gc, bc, state, starts, o, final_state, /*for_backward=*/true);
    context->save_for_backward(
        {qc, kc, vc, gc, bc, s.w, s.u, s.k_decayed, s.decay, s.states, starts_or_empty, s.inverse});
    context->saved_data["has_state"] = state.defined();
    context->saved_data["leaves"] = static_cast<int64_t>(q.scalar_type());
    return {o.to(q.scalar_type()), final_state};
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    return fused_backward(context, grad_outputs,
                          static_cast<at::ScalarType>(context->saved_data["leaves"].toInt()));
  }
};

// The fused autograd functions' call: T = 0 answered here, undefined state and starts as empty tensors.
template <typename Function>
std::pair<at::Tensor, at::Tensor> apply_fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const at::Tensor& g, const at::Tensor& beta, const at::Tensor& state,
                                              const at::Tensor& chunk_starts) {
  if (q.size(1) == 0) {
    const at::Tensor final_state =
        state.defined() ? state : at::zeros({q.size(0), q.size(2), q.size(3), q.size(3)}, g.options());
    return {at::empty_like(q), final_state};
  }
  const at::Tensor none = at::empty({0}, g.options());
  const variable_list outputs =
      Function::apply(q, k, v, g, beta, state.defined() ? state : none,
                      chunk_starts.defined() ? chunk_starts.contiguous() : none.to(at::kBool));
  return {outputs[0], outputs[1]};
}

}  // namespace

std::pair<at::Tensor, at::Tensor> gdn_chunk_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    const at::Tensor& g, const at::Tensor& beta,
                                                    const at::Tensor& state, const at::Tensor& chunk_starts) {
  check_fused_operands("gdn_chunk_forward", q, k, v, g, beta, state, chunk_starts);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3);
  const auto options = q.options();
  at::Tensor o = new_output({B, T, H, D}, options);
  at::Tensor final_state = new_output({B, H, D, D}, options.dtype(at::kFloat));  // states stay fp32
  if (T == 0) {
    final_state.copy_(state.defined() ? state : at::zeros({B, H, D, D}, final_state.options()));
    return {o, final_state};
  }
  if (q.scalar_type() == at::kBFloat16) {
    forward_bf16(q, k, v, g, beta, state, chunk_starts, o, final_state);
    return {o, final_state};
  }
  forward_fp32(q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(), state,
               chunk_starts, o, final_state);
  return {o, final_state};
}

std::pair<at::Tensor, at::Tensor> gdn_chunk_fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& g, const at::Tensor& beta,
                                                  const at::Tensor& state, const at::Tensor& chunk_starts) {
  check_fused_operands("gdn_chunk_fused", q, k, v, g, beta, state, chunk_starts);
  PRIME_CHECK(q.scalar_type() == at::kFloat, "gdn_chunk_fused: fp32 operands, got ", q.scalar_type());
  return apply_fused<GdnChunkFused>(q, k, v, g, beta, state, chunk_starts);
}

std::pair<at::Tensor, at::Tensor> gdn_chunk_fused_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& g, const at::Tensor& beta,
                                                       const at::Tensor& state, const at::Tensor& chunk_starts) {
  check_fused_operands("gdn_chunk_fused_bf16", q, k, v, g, beta, state, chunk_starts);
  PRIME_CHECK((q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kFloat) &&
                  k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "gdn_chunk_fused_bf16: bf16 or fp32 q, k, v, got ", q.scalar_type());
  return apply_fused<GdnChunkFusedBf16>(q, k, v, g, beta, state, chunk_starts);
}

at::Tensor unit_lower_inverse(const at::Tensor& A) {
  PRIME_CHECK(A.dim() >= 2 && A.size(-1) == A.size(-2) && A.size(-1) <= 64,
              "unit_lower_inverse: A must be [..., C, C] with C <= 64, got ", A.sizes());
  return UnitLowerInverse::apply(A);
}

std::pair<at::Tensor, at::Tensor> chunk_state_scan(const at::Tensor& w, const at::Tensor& k_decayed,
                                                   const at::Tensor& u_local,
                                                   const at::Tensor& decay,
                                                   const at::Tensor& initial,
                                                   const at::Tensor& starts) {
  PRIME_CHECK(w.dim() == 5 && k_decayed.sizes() == w.sizes() && u_local.dim() == 5,
              "chunk_state_scan: w ", w.sizes(), ", k_decayed ", k_decayed.sizes(), ", u_local ",
              u_local.sizes());
  const int64_t B = w.size(0), H = w.size(1), N = w.size(2), Dk = w.size(4), Dv = u_local.size(4);
  PRIME_CHECK(!starts.defined() || (starts.dim() == 1 && starts.size(0) == N &&
                                     starts.scalar_type() == at::kBool && starts.device() == w.device()),
              "chunk_state_scan: starts must be [", N, "] bool on ", w.device());
  const at::Tensor start = initial.defined() ? initial : at::zeros({B, H, Dk, Dv}, w.options());
  const at::Tensor starts_or_empty =
      starts.defined() ? starts.contiguous() : at::empty({0}, w.options().dtype(at::kBool));
  variable_list outputs = ChunkStateScan::apply(
      flat_or_undefined(w, 3), flat_or_undefined(k_decayed, 3), flat_or_undefined(u_local, 3),
      decay.reshape({B * H, N}).contiguous(), flat_or_undefined(start, 2), starts_or_empty);
  return {outputs[0].view({B, H, N, Dk, Dv}), outputs[1].view({B, H, Dk, Dv})};
}

}  // namespace prime::kernels
