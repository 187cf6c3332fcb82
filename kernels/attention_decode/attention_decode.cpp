// Dispatch of kernels/attention_decode: which operands the split-K decode attention serves, and
// the call that allocates the output and launches.
#include "kernels/attention_decode/attention_decode.h"

#include <ATen/core/grad_mode.h>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/attention_decode/attention_decode_launch.h"
#endif

namespace prime::kernels {

namespace {

bool served_head_dim(int64_t D, at::ScalarType type) {
  return D == 32 || D == 64 || D == 128 || (D == 256 && type != at::kFloat);
}

}  // namespace

bool attention_decode_apply(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& visible) {
  if (!q.defined() || !keys.defined() || !values.defined() || !visible.defined()) return false;
  if (!use_cuda_kernels(q)) return false;
  const bool needs_grad = q.requires_grad() || keys.requires_grad() || values.requires_grad();
  if (at::GradMode::is_enabled() && needs_grad) return false;
  const at::ScalarType type = q.scalar_type();
  if (type != at::kBFloat16 && type != at::kFloat) return false;
  if (keys.scalar_type() != type || values.scalar_type() != type || visible.scalar_type() != at::kBool)
    return false;
  if (keys.device() != q.device() || values.device() != q.device() || visible.device() != q.device())
    return false;
  if (q.dim() != 4 || keys.dim() != 4 || q.size(2) != 1 || values.sizes() != keys.sizes()) return false;
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3), Hkv = keys.size(1), S = keys.size(2);
  if (keys.size(0) != B || keys.size(3) != D || Hkv < 1 || Hq % Hkv != 0 || Hq / Hkv > 8) return false;
  if (S < 1 || visible.dim() != 1 || visible.size(0) != S || !served_head_dim(D, type)) return false;
  return keys.is_contiguous() && values.is_contiguous();
}

at::Tensor attention_decode(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& visible, double scale) {
  PRIME_CHECK(attention_decode_apply(q, keys, values, visible), "attention_decode: operands the kernel ",
              "does not serve (q ", q.sizes(), ", keys ", keys.sizes(), "); ask attention_decode_apply first");
  require_cuda_build("attention_decode");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3);
  at::Tensor out = new_output({B, Hq, 1, D}, q.options());
#ifdef PRIME_WITH_CUDA
  // q arrives as a transposed view of [B, 1, Hq, D]: contiguous() copies only if it is strided.
  detail::launch_attention_decode(q.reshape({B, Hq, D}).contiguous(), keys, values, visible.contiguous(), scale,
                                  out.view({B, Hq, D}));
#else
  (void)scale;
#endif
  return out;
}

}  // namespace prime::kernels
