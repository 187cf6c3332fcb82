// Dispatch of kernels/ssm_decode: which operands the fused decode steps serve, and the calls
// that allocate the output and launch. The state is the cache's own tensor, updated in place.
#include "kernels/ssm_decode/ssm_decode.h"

#include <ATen/core/grad_mode.h>

#include <initializer_list>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
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
                              const at::Tensor& Bm, const at::Tensor& Cm, at::Tensor& state) {
  PRIME_CHECK(mamba2_decode_apply(x, delta, A, Bm, Cm, state), "mamba2_decode_step: operands the ",
              "kernel does not serve (x ", x.sizes(), ", state ", state.sizes(),
              "); ask mamba2_decode_apply first");
  require_cuda_build("mamba2_decode_step");
  at::Tensor y = new_output({state.size(0), state.size(1), state.size(2)}, state.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_mamba2_decode(x.contiguous(), delta.contiguous(), A.contiguous(), Bm.contiguous(),
                               Cm.contiguous(), state, y);
#endif
  return y;
}

}  // namespace prime::kernels
