// Host side of GKA's bf16 forward: operands cast and laid out for the three launches.
#include "kernels/gka_solve/gka_forward_bf16.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/gka_solve/gka_forward_bf16_launch.h"
#include "kernels/ssd_chunk/ssd_chunk_launch.h"
#endif

namespace prime::kernels {

namespace {

constexpr int64_t kChunk = 64;  // the walk's and the per-chunk kernel's

std::atomic<GkaForwardIterate> last_form{GkaForwardIterate::Registers};

bool is_float_gate(const at::Tensor& gate, const at::Tensor& q) {
  return !gate.defined() || (gate.scalar_type() == at::kFloat && gate.device() == q.device() &&
                             gate.sizes() == q.sizes().slice(0, 3));
}

bool is_state(const at::Tensor& state, const at::Tensor& q) {
  const int64_t B = q.size(0), H = q.size(2), D = q.size(3);
  return !state.defined() || (state.scalar_type() == at::kFloat && state.device() == q.device() &&
                              state.sizes() == at::IntArrayRef({B, H, D, D}));
}

}  // namespace

GkaForwardIterate gka_forward_iterate(const at::Device& device) {
  const char* value = std::getenv("PRIME_GKA_FORWARD_ITERATE");
  const std::string text = value ? value : "";
  if (text.empty())
    return gka_forward_wgmma_available(device) ? GkaForwardIterate::OneGroup : GkaForwardIterate::Registers;
  if (text == "registers") return GkaForwardIterate::Registers;
  if (text == "shared") return GkaForwardIterate::Shared;
  if (text == "wgmma") return GkaForwardIterate::Wgmma;
  if (text == "one-group") return GkaForwardIterate::OneGroup;
  throw user_error("PRIME_GKA_FORWARD_ITERATE=", text, ": must be \"registers\" (the bf16 forward's solve keeps ",
                   "its iterate in registers), \"shared\" (in shared memory), \"wgmma\" (on Hopper's warpgroup ",
                   "MMAs) or \"one-group\" (on one warpgroup a chunk at head dim 128); unset, Hopper GPUs take ",
                   "\"one-group\" and others \"registers\"");
}

GkaForwardIterate gka_forward_last_form() { return last_form.load(); }

bool gka_forward_wgmma_available(const at::Device& device) {
#ifdef PRIME_WITH_CUDA
  return device.is_cuda() && detail::gka_forward_bf16_wgmma_device(device);
#else
  (void)device;
  return false;
#endif
}

bool gka_forward_bf16_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& log_decay_kk, const at::Tensor& log_decay_kv, const at::Tensor& alpha,
                            const at::Tensor& kk_state, const at::Tensor& kv_state, int64_t chunk_size,
                            const at::Tensor& chunk_starts, int num_iter) {
  for (const at::Tensor* operand : {&q, &k, &v, &log_decay_kk, &log_decay_kv, &alpha, &kk_state, &kv_state})
    if (records_gradient(*operand)) return false;
  if (!use_cuda_kernels(q) || q.dim() != 4 || num_iter < 1) return false;
  if (q.scalar_type() != at::kBFloat16 && q.scalar_type() != at::kFloat) return false;
  for (const at::Tensor* operand : {&k, &v})
    if (operand->sizes() != q.sizes() || operand->scalar_type() != q.scalar_type() || operand->device() != q.device())
      return false;
  const int64_t D = q.size(3);
  if (!(D == 32 || D == 64 || D == 128) || q.size(0) * q.size(2) > 65535 || (q.size(1) + kChunk - 1) / kChunk > 65535)
    return false;
  if (log_decay_kk.defined() != log_decay_kv.defined() ||
      (log_decay_kk.defined() && !log_decay_kk.is_same(log_decay_kv)))
    return false;
  if (!is_float_gate(log_decay_kk, q) || !is_float_gate(alpha, q)) return false;
  if (!is_state(kk_state, q) || !is_state(kv_state, q)) return false;
  if (chunk_starts.defined() && chunk_size != kChunk) return false;
#ifdef PRIME_WITH_CUDA
  return detail::gka_forward_bf16_fits_device(D, q.device());
#else
  return true;  // never reached: use_cuda_kernels is false without the CUDA build
#endif
}

GkaForwardBf16 gka_forward_bf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& log_decay, const at::Tensor& alpha, const at::Tensor& kk_state,
                                const at::Tensor& kv_state, const at::Tensor& chunk_starts, double ridge_strength,
                                int num_iter, double output_scale) {
  PRIME_CHECK(gka_forward_bf16_apply(q, k, v, log_decay, log_decay, alpha, kk_state, kv_state, kChunk, chunk_starts,
                                     num_iter),
              "gka_forward_bf16: operands the kernels do not serve (q ", q.sizes(),
              "); ask gka_forward_bf16_apply first");
  require_cuda_build("gka_forward_bf16");
  const GkaForwardIterate iterate = gka_forward_iterate(q.device());
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), M = B * H;
  const int64_t N = (T + kChunk - 1) / kChunk;
  PRIME_CHECK(!chunk_starts.defined() || (chunk_starts.dim() == 1 && chunk_starts.size(0) == N &&
                                          chunk_starts.scalar_type() == at::kBool),
              "gka_forward_bf16: chunk_starts must be [", N, "] bool");
  const auto bf16 = [](const at::Tensor& x) { return contiguous_aligned(x.to(at::kBFloat16), 16); };
  const at::Tensor qb = bf16(q), kb = bf16(k), vb = bf16(v);
  const auto f32 = q.options().dtype(at::kFloat);
  // The SSD kernels' decay is delta A: delta = -log decay >= 0 with A = -1 (and delta as no input scale).
  const at::Tensor log_decays = log_decay.defined() ? log_decay.contiguous() : at::zeros({B, T, H}, f32);
  const at::Tensor delta = log_decays.neg();
  const at::Tensor A = at::full({H}, -1.0, f32);
  const at::Tensor restart = chunk_starts.defined() ? chunk_starts.to(q.device()).contiguous() : at::Tensor();
  GkaForwardBf16 out;
  out.kk_state = new_output({B, H, D, D}, f32);
  at::Tensor kv_final = new_output({M, D, D}, f32);  // S^T: the walk's state is [v dim, k dim]
  out.o = new_output(q.sizes(), q.options());
#ifdef PRIME_WITH_CUDA
  // The states entering each chunk: H = sum e^{G_end - G_t} k_t k_t^T and S^T = sum ... v_t k_t^T.
  const at::Tensor h_states = new_output({M, N, D, D}, qb.options()), s_states = new_output({M, N, D, D}, qb.options());
  detail::launch_ssd_walk_bf16(kb, kb, delta, A,
                               kk_state.defined() ? contiguous_aligned(kk_state.reshape({M, D, D}), 32) : at::Tensor(),
                               restart, h_states, out.kk_state.view({M, D, D}), /*delta_scales_inputs=*/false);
  const at::Tensor kv_initial =
      kv_state.defined() ? kv_state.reshape({M, D, D}).transpose(1, 2).contiguous() : at::Tensor();
  detail::launch_ssd_walk_bf16(vb, kb, delta, A, kv_initial, restart, s_states, kv_final,
                               /*delta_scales_inputs=*/false);
  const int form = detail::launch_gka_forward_bf16(
      qb, kb, vb, log_decays, alpha.defined() ? alpha.contiguous() : at::Tensor(), h_states, s_states, ridge_strength,
      num_iter, output_scale,
      iterate == GkaForwardIterate::Registers  ? detail::kIterateRegisters
      : iterate == GkaForwardIterate::Wgmma    ? detail::kIterateWgmma
      : iterate == GkaForwardIterate::OneGroup ? detail::kIterateOneGroup
                                               : detail::kIterateShared,
      out.o);
  last_form = form == detail::kIterateRegisters  ? GkaForwardIterate::Registers
              : form == detail::kIterateWgmma    ? GkaForwardIterate::Wgmma
              : form == detail::kIterateOneGroup ? GkaForwardIterate::OneGroup
                                                 : GkaForwardIterate::Shared;
#endif
  out.kv_state = kv_final.transpose(1, 2).contiguous().view({B, H, D, D});
  return out;
}

}  // namespace prime::kernels
