// GKA's decode step with a CTA per multiprocessor taking head after head, the next head's states copied
// into shared memory while it solves (gka_decode_streamed_kernels.cu). launch_gka_decode
// (gka_decode_kernels.cu) takes it at D = 64 and 128 with at most kGkaStreamedMaxIterations iterations where the
// device gives a block its shared memory, unless PRIME_GKA_DECODE_STREAMED asks for the per-head kernel ("0");
// elsewhere it launches the per-head kernel. For an fp32 solve at D = 128 two of its blocks share a multiprocessor,
// each staging only the next head's S (H is read straight from the cache). CUDA builds only.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/ssm_decode/gka_decode_step.cuh"

namespace prime::kernels::detail {

// Chebyshev iterations the streamed kernel serves (its table of the omega weights; more: the per-head kernel).
constexpr int kGkaStreamedMaxIterations = 256;

// Shared memory the streamed kernel takes at head dim `dim` (0: a dim it does not serve, all but 64 and
// 128): the next head's two fp32 states (S alone for an fp32 solve at D = 128), the partial sums and the vectors.
size_t gka_decode_streamed_shared_bytes(int64_t dim, bool float64_solve);

// p as the per-head kernel takes it (dim 64 or 128, the states' pointers 16-byte aligned), `heads` = B H.
template <typename S>
void launch_gka_decode_streamed(const GkaStep<S>& p, int heads, cudaStream_t stream);

}  // namespace prime::kernels::detail
