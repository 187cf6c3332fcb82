// Dispatch of kernels/ssm_decode: which operands the fused decode steps serve, and the calls
// that allocate the output and launch. The state is the cache's own tensor, updated in place.
#include "kernels/ssm_decode/ssm_decode.h"

#include <ATen/core/grad_mode.h>

#include <cstdlib>
#include <initializer_list>
#include <string>

#include "kernels/common/policy.h"
#include "kernels/common/switches.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/ssm_decode/ssm_decode_launch.h"
#endif

namespace prime::kernels {

namespace {

bool fp32_on_device_of(const at::Tensor& state, std::initializer_list<const at::Tensor*> operands) {
  for (const at::Tensor* t : operands)
    if (!t->defined() || t->scalar_type() != at::kFloat || t->device() != state.device()) return false;
  return true;
}

bool has_sizes(const at::Tensor& tensor, std::initializer_list<int64_t> sizes) {
  return tensor.sizes() == at::IntArrayRef(sizes);
}

bool served_dim(int64_t dim) { return dim >= 1 && dim <= kDecodeMaxDim; }

// PRIME_GKA_DECODE_KERNEL=0: GKA's torch step (read at each call: timings switch it).
bool gka_kernel_opted_out() {
  return environment_switch<bool>("PRIME_GKA_DECODE_KERNEL", {{"1", false, "GKA's decode step kernel"},
                                                              {"0", true, "GKA's torch step"}});
}

// Decode only: the step overwrites the state, which autograd could not differentiate.
bool decode_state(const at::Tensor& state) {
  return state.defined() && use_cuda_kernels(state) && !at::GradMode::is_enabled() &&
         state.scalar_type() == at::kFloat && state.dim() == 4 && state.is_contiguous() &&
         !state.requires_grad();
}

}  // namespace

bool gdn_decode_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& g, const at::Tensor& beta, const at::Tensor& state) {
  if (!decode_state(state) || !fp32_on_device_of(state, {&q, &k, &v, &g, &beta})) return false;
  const int64_t B = state.size(0), H = state.size(1), Dk = state.size(2), Dv = state.size(3);
  return served_dim(Dk) && served_dim(Dv) && has_sizes(q, {B, H, Dk}) && has_sizes(k, {B, H, Dk}) &&
         has_sizes(v, {B, H, Dv}) && has_sizes(g, {B, H}) && has_sizes(beta, {B, H});
}

at::Tensor gdn_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& g, const at::Tensor& beta, at::Tensor& state) {
  PRIME_CHECK(gdn_decode_apply(q, k, v, g, beta, state), "gdn_decode_step: operands the kernel ",
              "does not serve (q ", q.sizes(), ", state ", state.sizes(), "); ask gdn_decode_apply first");
  require_cuda_build("gdn_decode_step");
  at::Tensor o = new_output({state.size(0), state.size(1), state.size(3)}, state.options());
#ifdef PRIME_WITH_CUDA
  // The mixers pass per-token slices; contiguous() copies only when they are strided.
  detail::launch_gdn_decode(q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(),
                            beta.contiguous(), state, o);
#endif
  return o;
}

bool mamba2_decode_apply(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                         const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state) {
  if (!decode_state(state) || !fp32_on_device_of(state, {&x, &delta, &A, &Bm, &Cm})) return false;
  const int64_t B = state.size(0), H = state.size(1), P = state.size(2), N = state.size(3);
  return served_dim(P) && served_dim(N) && has_sizes(x, {B, H, P}) && has_sizes(delta, {B, H}) &&
         has_sizes(A, {H}) && has_sizes(Bm, {B, H, N}) && has_sizes(Cm, {B, H, N});
}

at::Tensor mamba2_decode_step(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                              const at::Tensor& Bm, const at::Tensor& Cm, at::Tensor& state, const at::Tensor& skip) {
  PRIME_CHECK(mamba2_decode_apply(x, delta, A, Bm, Cm, state), "mamba2_decode_step: operands the ",
              "kernel does not serve (x ", x.sizes(), ", state ", state.sizes(),
              "); ask mamba2_decode_apply first");
  require_cuda_build("mamba2_decode_step");
  at::Tensor y = new_output({state.size(0), state.size(1), state.size(2)}, state.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_mamba2_decode(x.contiguous(), delta.contiguous(), A.contiguous(), Bm.contiguous(),
                               Cm.contiguous(), state, skip, y);
#endif
  return y;
}

bool gka_decode_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& alpha,
                      const at::Tensor& decay_kk, const at::Tensor& decay_kv, const at::Tensor& kk_state,
                      const at::Tensor& kv_state, const GkaDecodeOptions& options) {
  if (!decode_state(kv_state) || options.num_iter < 0 || gka_kernel_opted_out()) return false;
  if (options.num_iter > 0 ? !decode_state(kk_state) || kk_state.sizes() != kv_state.sizes() : kk_state.defined())
    return false;
  const at::ScalarType type = q.defined() ? q.scalar_type() : at::kFloat;
  if (type != at::kFloat && type != at::kDouble) return false;
  const int64_t B = kv_state.size(0), H = kv_state.size(1), D = kv_state.size(2);
  if (kv_state.size(3) != D || D < 1 || D > kGkaDecodeMaxDim) return false;
  for (const at::Tensor* t : {&q, &k, &v})
    if (!t->defined() || t->scalar_type() != type || t->device() != kv_state.device() || !has_sizes(*t, {B, H, D}))
      return false;
  for (const at::Tensor* t : {&alpha, &decay_kk, &decay_kv})
    if (t->defined() && (t->scalar_type() != type || t->device() != kv_state.device() || !has_sizes(*t, {B, H})))
      return false;
#ifdef PRIME_WITH_CUDA
  // The block's shared memory (partial sums, q, k, x): what this device lets one block take.
  const auto* properties = at::cuda::getDeviceProperties(kv_state.get_device());
  return detail::gka_decode_shared_bytes(D, type) <= properties->sharedMemPerBlockOptin;
#else
  return false;
#endif
}

at::Tensor gka_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& alpha,
                           const at::Tensor& decay_kk, const at::Tensor& decay_kv, at::Tensor& kk_state,
                           at::Tensor& kv_state, const GkaDecodeOptions& options) {
  PRIME_CHECK(gka_decode_apply(q, k, v, alpha, decay_kk, decay_kv, kk_state, kv_state, options),
              "gka_decode_step: operands the kernel does not serve (q ", q.sizes(), ", kv_state ", kv_state.sizes(),
              "); ask gka_decode_apply first");
  require_cuda_build("gka_decode_step");
  at::Tensor o = new_output({kv_state.size(0), kv_state.size(1), kv_state.size(2)}, kv_state.options());
#ifdef PRIME_WITH_CUDA
  const auto contiguous = [](const at::Tensor& t) { return t.defined() ? t.contiguous() : t; };
  detail::launch_gka_decode(q.contiguous(), k.contiguous(), v.contiguous(), contiguous(alpha), contiguous(decay_kk),
                            contiguous(decay_kv), kk_state, kv_state, o, options);
#endif
  return o;
}

}  // namespace prime::kernels
