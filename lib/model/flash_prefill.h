// Attention of a prefill chunk against everything a KV cache holds, on CUDA, in one flash
// attention call. A chunk's Tq queries sit at the last Tq of the Tk positions the cache holds once
// the chunk is appended, so query i sees keys 0 .. Tk - Tq + i: a causal mask aligned to the
// bottom right of the [Tq, Tk] score matrix. SDPA's is_causal is aligned to the top left and it
// refuses flash attention for a non-square causal mask, so the general path builds the [Tq, Tk]
// mask and runs a masked kernel: at 128K tokens in 16K chunks that was most of the prefill. Flash
// attention's own causal mode is the bottom-right one, so ATen's flash kernel, called directly,
// computes the chunk's attention exactly, grouped query heads included, without any mask.
#pragma once

#include <ATen/ATen.h>

namespace prime::model {

// Whether flash_prefill serves a chunk: policy Auto (PRIME_KERNELS=torch keeps the masked SDPA
// form), q [B, Hq, Tq, D] and keys, values [B, Hkv, Tk, D] on one CUDA device, bf16 or fp16, Tq <=
// Tk, Hq a multiple of Hkv, D a multiple of 8 up to 256, last dims contiguous, and keys at the
// positions 0 .. Tk - 1 with the queries at the last Tq of them (full attention over a cache that
// evicted nothing: the caller says so).
bool flash_prefill_apply(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values);

// softmax(scale q kᵀ + bottom-right causal mask) v: [B, Hq, Tq, D] in q's dtype, as
// at::scaled_dot_product_attention with that mask returns it.
at::Tensor flash_prefill(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, double scale);

}  // namespace prime::model
