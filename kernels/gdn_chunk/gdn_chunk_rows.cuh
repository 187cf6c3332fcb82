// Where a per-chunk view [B,H,N,64,D] of q, k, v or one of their gradients puts its elements: a view of the
// time-major [B,T,H,D] tensor or a per-chunk copy (per_chunk_rows in gdn_chunk_backward.cpp), for the
// backward's kernels that read or write a chunk's rows themselves. Chunk c = (b H + h) N + n.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

#include "kernels/common/cuda_check.cuh"

namespace prime::kernels::detail {

// Strides over b, h, n and the row, in elements (1 along D).
struct ChunkRows {
  long long b, h, n, row;
};

inline ChunkRows chunk_rows_of(const at::Tensor& x) { return {x.stride(0), x.stride(1), x.stride(2), x.stride(3)}; }

// Checks a gradient's per-chunk view that a kernel writes in pairs: a CUDA view of like's sizes on its device, of
// dtype `type`, each row contiguous, the other strides even, the data on 4 bytes (bf16) or 8 (fp32).
inline void check_gradient_rows(const at::Tensor& out, const at::Tensor& like, at::ScalarType type, const char* op,
                                const char* name) {
  PRIME_CHECK(out.defined() && out.is_cuda() && out.device() == like.device() && out.scalar_type() == type &&
                  out.dim() == 5 && out.sizes() == like.sizes() && out.stride(4) == 1,
              op, ": ", name, " must be a ", type, " CUDA view of the inputs' sizes ", like.sizes(),
              " with its rows contiguous");
  for (int64_t dim = 0; dim < 4; ++dim)
    PRIME_CHECK(out.stride(dim) % 2 == 0, op, ": ", name, "'s strides must be even (pairs are stored), got ",
                out.strides());
  check_aligned(out, op, name, type == at::kBFloat16 ? 4 : 8);
}

// The first element of chunk `chunk`'s rows.
template <typename T>
__device__ __forceinline__ T* chunk_rows(T* x, const ChunkRows& at, size_t chunk, int H, int N) {
  const long long m = static_cast<long long>(chunk / N), n = static_cast<long long>(chunk % N);
  return x + (m / H) * at.b + (m % H) * at.h + n * at.n;
}

}  // namespace prime::kernels::detail
