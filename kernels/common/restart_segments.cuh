// Walks over chunks that restart (packed documents) split into independent segments: with
// restart flags, a walk's state entering a flagged chunk is zero (forwards), and nothing flows
// back past it (backwards), so the chunks between two flags can be walked by their own block.
// Packed documents put every document's chunks in one row: walked in one sequence, a row of ~500
// chunks keeps a few blocks busy for its whole length; walked per segment, it keeps the GPU full.
//
// Segment 0 starts at chunk 0; segment i >= 1 at the i-th flagged chunk among 1..num_chunks-1.
// A walk kernel launched with `slots` blocks along one grid dimension takes segments slot,
// slot + slots, ... (`for_each_restart_segment`); the segment holding chunk 0 takes the walk's
// initial state forwards and writes its final state backwards, the last one the reverse.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/cuda_check.cuh"

namespace prime::kernels::detail {
namespace {  // each CUDA source that walks gets its own copy of the kernel

// begins[0] = number of segments, begins[1 + i] = first chunk of segment i. One warp.
__global__ void __launch_bounds__(32) restart_segments_kernel(const bool* __restrict__ starts, int num_chunks,
                                                              int* __restrict__ begins) {
  const int lane = threadIdx.x;
  int count = 1;
  if (lane == 0) begins[1] = 0;
  for (int base = 1; base < num_chunks; base += 32) {
    const int chunk = base + lane;
    const bool flagged = chunk < num_chunks && starts[chunk];
    const unsigned ballot = __ballot_sync(0xffffffffu, flagged);
    if (flagged) begins[1 + count + __popc(ballot & ((1u << lane) - 1u))] = chunk;
    count += __popc(ballot);
  }
  if (lane == 0) begins[0] = count;
}

// The segments of a walk: `begins` as above (undefined without flags: one segment), and how many
// blocks along the segment dimension to launch (slots <= num_chunks), enough for about four
// blocks per SM in all when the other grid dimensions hold `other_blocks`.
struct RestartSegments {
  at::Tensor begins;
  int slots = 1;
  const int* data() const { return begins.defined() ? begins.data_ptr<int>() : nullptr; }
};

inline RestartSegments restart_segments(const at::Tensor& starts, int64_t num_chunks, int64_t other_blocks) {
  RestartSegments segments;
  if (!starts.defined() || num_chunks <= 1) return segments;
  segments.begins = at::empty({num_chunks + 1}, starts.options().dtype(at::kInt));
  restart_segments_kernel<<<1, 32, 0, at::cuda::getCurrentCUDAStream()>>>(
      starts.data_ptr<bool>(), static_cast<int>(num_chunks), segments.begins.data_ptr<int>());
  PRIME_CUDA_CHECK_LAUNCH("restart_segments_kernel");
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (4 * sms + std::max<int64_t>(other_blocks, 1) - 1) / std::max<int64_t>(other_blocks, 1);
  segments.slots = static_cast<int>(std::clamp<int64_t>(wanted, 1, std::min<int64_t>(num_chunks, 65535)));
  return segments;
}

// Calls walk(begin, end, first, last) for the segments of block slot `slot` (first: the segment
// holding chunk 0; last: the one holding chunk num_chunks - 1). begins == nullptr: one segment.
template <typename Walk>
__device__ __forceinline__ void for_each_restart_segment(const int* begins, int num_chunks, int slot, int slots,
                                                         Walk&& walk) {
  if (begins == nullptr) {
    if (slot == 0) walk(0, num_chunks, true, true);
    return;
  }
  const int count = begins[0];
  for (int segment = slot; segment < count; segment += slots) {
    const int begin = begins[1 + segment];
    const int end = segment + 1 < count ? begins[2 + segment] : num_chunks;
    walk(begin, end, segment == 0, segment + 1 == count);
  }
}

}  // namespace
}  // namespace prime::kernels::detail
