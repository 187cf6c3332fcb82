// Split-K ("flash decoding") attention of one query token per sequence against a static KV
// cache's slots: the decode step of every attention and SWA layer. The torch form
// (model::attend_one_token) is two batched matmuls around an fp32 softmax: it writes and re-reads
// the scores, and at small batch it leaves most of the GPU idle. Here each block streams a range
// of slots of one (sequence, KV head) once, for all the query heads that share that KV head
// (GQA), with an online softmax in fp32; a second small kernel merges the ranges.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// Whether attention_decode serves these operands: policy Auto, no gradient needed, q
// [B, Hq, 1, D] and keys, values [B, Hkv, S, D] (contiguous) of one dtype, bfloat16 or float
// (half runs the torch form), on one CUDA device, Hq a multiple of Hkv with Hq / Hkv <= 8, D in {32, 64, 128, 256}
// (float: up to 128), visible a bool [S] on that device. Otherwise the torch form runs.
bool attention_decode_apply(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& visible);

// softmax(scale q K^T over the visible slots) V for every query head h, which reads KV head
// h / (Hq / Hkv); scores, softmax and sums in fp32; returns [B, Hq, 1, D] in q's dtype. Launched
// on the current stream without host synchronisation (a CUDA graph may capture it); its launch
// configuration depends only on the shapes.
at::Tensor attention_decode(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& visible, double scale);

}  // namespace prime::kernels
