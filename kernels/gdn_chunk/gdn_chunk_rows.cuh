// Where a per-chunk view [B,H,N,64,D] of q, k, v or one of their gradients puts its elements: a view of the
// time-major [B,T,H,D] tensor or a per-chunk copy (per_chunk_rows in gdn_chunk_backward.cpp), for the
// backward's kernels that read or write a chunk's rows themselves. Chunk c = (b H + h) N + n.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace prime::kernels::detail {

// Strides over b, h, n and the row, in elements (1 along D).
struct ChunkRows {
  long long b, h, n, row;
};

inline ChunkRows chunk_rows_of(const at::Tensor& x) { return {x.stride(0), x.stride(1), x.stride(2), x.stride(3)}; }

// The first element of chunk `chunk`'s rows.
template <typename T>
__device__ __forceinline__ T* chunk_rows(T* x, const ChunkRows& at, size_t chunk, int H, int N) {
  const long long m = static_cast<long long>(chunk / N), n = static_cast<long long>(chunk % N);
  return x + (m / H) * at.b + (m % H) * at.h + n * at.n;
}

}  // namespace prime::kernels::detail
