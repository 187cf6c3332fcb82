// Dispatch of kernels/kv_cache_step: which operands the fused cache write serves, and the call
// that allocates the mask and launches.
#include "kernels/kv_cache_step/kv_cache_step.h"

#include <climits>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/kv_cache_step/kv_cache_step_launch.h"
#endif

namespace prime::kernels {

bool kv_cache_step_apply(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& slot_positions, const at::Tensor& position) {
  for (const at::Tensor* t : {&keys, &values, &k, &v, &slot_positions, &position})
    if (!t->defined()) return false;
  if (!use_cuda_kernels(keys)) return false;
  for (const at::Tensor* t : {&keys, &values, &k, &v})
    if (records_gradient(*t)) return false;
  const at::ScalarType type = keys.scalar_type();
  for (const at::Tensor* t : {&values, &k, &v})
    if (t->scalar_type() != type || t->device() != keys.device()) return false;
  for (const at::Tensor* t : {&slot_positions, &position})
    if (t->scalar_type() != at::kLong || t->device() != keys.device()) return false;
  if (keys.dim() != 4 || values.sizes() != keys.sizes() || k.dim() != 4 || v.sizes() != k.sizes()) return false;
  const int64_t B = keys.size(0), H = keys.size(1), S = keys.size(2), D = keys.size(3);
  if (k.size(0) != B || k.size(1) != H || k.size(2) != 1 || k.size(3) != D || S < 1) return false;
  if (slot_positions.dim() != 1 || slot_positions.size(0) != S || position.numel() != 1) return false;
  if (B * H * D > INT_MAX || S > INT_MAX) return false;
  return keys.is_contiguous() && values.is_contiguous() && slot_positions.is_contiguous();
}

at::Tensor kv_cache_step(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& slot_positions, const at::Tensor& position,
                         const KvStepGeometry& geometry) {
  PRIME_CHECK(kv_cache_step_apply(keys, values, k, v, slot_positions, position),
              "kv_cache_step: operands the kernel does not serve (keys ", keys.sizes(), ", k ", k.sizes(),
              "); ask kv_cache_step_apply first");
  PRIME_CHECK(geometry.ring_start >= 0 && geometry.ring_start < keys.size(2) && geometry.window >= 0 &&
                  geometry.sinks >= 0,
              "kv_cache_step: ring start ", geometry.ring_start, " of ", keys.size(2), " slots, window ",
              geometry.window, ", sinks ", geometry.sinks);
  require_cuda_build("kv_cache_step");
  at::Tensor visible = new_output({keys.size(2)}, keys.options().dtype(at::kBool));
#ifdef PRIME_WITH_CUDA
  const int64_t B = k.size(0), H = k.size(1), D = k.size(3);
  // k and v arrive as transposed views of [B, 1, H, D]: contiguous() makes the small copy.
  detail::launch_kv_cache_step(keys, values, k.reshape({B, H, D}).contiguous(), v.reshape({B, H, D}).contiguous(),
                               slot_positions, position.reshape({1}), geometry, visible);
#endif
  return visible;
}

}  // namespace prime::kernels
