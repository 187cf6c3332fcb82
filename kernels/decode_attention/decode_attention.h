// Decode attention on a static KV cache (model::KvCache in static mode): one query token per
// sequence against every slot, split over the slots (flash-decoding) so that even B = 1 fills the
// GPU, with fp32 accumulation, reading the position on the device (no host sync: CUDA-graph safe).
// The reference it must equal is model::attend_one_token's ATen path (tests/test_step_decoder.cpp).
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// out[b, h] = sum_j softmax_j(scale q[b,h] . k[b,h/G,j]) v[b,h/G,j] over the slots j that the query
// at *position sees: slot_positions[j] >= 0 and <= *position and, when window > 0, within the
// window (*position - slot_positions[j] < window) or a sink (slot_positions[j] < sinks).
// q [B, Hq, D]; keys, values [B, Hkv, S, D] contiguous, q's dtype (fp32, fp16 or bf16), Hq = G Hkv;
// slot_positions [S] and position [1] int64; all on one CUDA device. Returns [B, Hq, D].
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& slot_positions, const at::Tensor& position, int64_t window,
                            int64_t sinks, double scale);

// Whether decode_attention takes this head dim (<= 256), number of query heads per kv head (<= 8)
// and dtype (fp32, fp16, bf16; float64 stays on the ATen path).
bool decode_attention_supported(int64_t head_dim, int64_t groups, at::ScalarType dtype);

}  // namespace prime::kernels
