// Launcher of kernels/kv_cache_step (defined in kv_cache_step_kernels.cu; called only by
// kv_cache_step.cpp in CUDA builds): keys, values [B, Hkv, S, D] contiguous; k, v [B, Hkv, D]
// contiguous of their dtype; slot_positions int64 [S]; position int64 [1]; visible bool [S].
#pragma once

#include <ATen/ATen.h>

#include "kernels/kv_cache_step/kv_cache_step.h"

namespace prime::kernels::detail {

void launch_kv_cache_step(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& slot_positions, const at::Tensor& position,
                          const KvStepGeometry& geometry, const at::Tensor& visible);

}  // namespace prime::kernels::detail
