// Hopper's warpgroup MMA (wgmma.mma_async, sm_90a) for bf16 operands with fp32 accumulation, and
// the shared-memory layout its descriptors read.
//
// A warpgroup (4 warps, 128 threads, warp w of the group owning rows 16 w .. 16 w + 15) computes
// D[64 x N] (+)= A[64 x 16] B[16 x N] in one instruction (here N = 64, what the kernels use). D lives
// in registers in the layout of mma.sync's m16n8 accumulators side by side: thread (w, lane) holds
// d[4 j + 2 i + e] = D(16 w + g + 8 i, 8 j + 2 t + e), g = lane / 4, t = lane % 4. A comes from
// registers in mma.sync m16n8k16's A layout (rows offset by 16 w: a[0] = A(g, 2t..+1), a[1] = A(g + 8,
// 2t..+1), a[2] = A(g, 8 + 2t..+1), a[3] = A(g + 8, 8 + 2t..+1)), so an accumulator's columns 16 s ..
// 16 s + 15 rounded to bf16 pairs are the A fragment of depth step s without moving a value between
// threads; or A comes from shared memory. B always comes from shared memory.
//
// Shared operands are bf16 matrices in the 128-byte swizzle (wgmma_layout.h).
//
// Asynchrony: fence() before the first MMA of a batch whose registers were written since (the
// accumulators or A fragments); commit() closes the batch; wait<0>() waits for it. Shared memory
// written by ordinary stores must be made visible to the MMAs with fence_proxy_async() (then a
// barrier when other threads wrote it). Everything here compiles to a trap outside sm_90a.
#pragma once

#include <cstdint>

#include "kernels/common/wgmma_layout.h"

namespace prime::kernels::detail::wgmma {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PRIME_WGMMA_ENABLED 1
#else
#define PRIME_WGMMA_ENABLED 0
#endif

// Thread (warp w of its warpgroup, lane) holds element e of a 64 x N accumulator at
// (accumulator_row(e), accumulator_col(e)); the A fragment of depth step s of a 64 x K matrix held
// that way is its elements 8 s .. 8 s + 7 as bf16 pairs: register r = (8 s + 2 r, 8 s + 2 r + 1).
__device__ __forceinline__ int accumulator_row(int e) {
  return 16 * ((threadIdx.x / 32) % 4) + (threadIdx.x % 32) / 4 + 8 * ((e / 2) % 2);
}
__device__ __forceinline__ int accumulator_col(int e) { return 8 * (e / 4) + 2 * (threadIdx.x % 4) + e % 2; }

__device__ __forceinline__ void fence() {
#if PRIME_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void commit() {
#if PRIME_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

template <int Pending>
__device__ __forceinline__ void wait() {
#if PRIME_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
#else
  __trap();
#endif
}

// Ordinary shared-memory stores made visible to the MMAs' (async proxy) reads.
__device__ __forceinline__ void fence_proxy_async() {
#if PRIME_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  __trap();
#endif
}

// p rounded up to a 1024-byte boundary of shared memory (where a swizzled operand starts).
__device__ __forceinline__ unsigned char* align_1024(unsigned char* p) {
  const uint32_t at = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return p + ((1024u - (at & 1023u)) & 1023u);
}

// Keeps the compiler from moving reads or writes of these registers across an MMA batch's issue
// and wait (it does not see the asynchronous writes).
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_operands(uint32_t (&a)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

#define PRIME_WGMMA_D32                                                                                           \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),     \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),      \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),     \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define PRIME_WGMMA_D32_LIST                                                                                       \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31}, "

// D[64 x 64] (+)= A B: A in registers (a), B by descriptor; TransB: B is MN-major. accumulate false:
// D = A B.
template <bool TransB>
__device__ __forceinline__ void mma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b, bool accumulate) {
#if PRIME_WGMMA_ENABLED
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " PRIME_WGMMA_D32_LIST
               "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
               : PRIME_WGMMA_D32
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TransB ? 1 : 0),
                 "r"(static_cast<int>(accumulate)));
#else
  __trap();
#endif
}

// D[64 x 64] (+)= A B, both by descriptor: A K-major, or with TransA MN-major (A = M^T for a matrix
// M stored by rows, its rows the depth: the descriptor is mn_major's of M); TransB: B is MN-major.
template <bool TransB, bool TransA = false>
__device__ __forceinline__ void mma_ss(float (&d)[32], uint64_t a, uint64_t b, bool accumulate) {
#if PRIME_WGMMA_ENABLED
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %36, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " PRIME_WGMMA_D32_LIST
               "%32, %33, p, 1, 1, %34, %35;\n}\n"
               : PRIME_WGMMA_D32
               : "l"(a), "l"(b), "n"(TransA ? 1 : 0), "n"(TransB ? 1 : 0), "r"(static_cast<int>(accumulate)));
#else
  __trap();
#endif
}

// D[64 x 32] (+)= A B, both by descriptor (the m64n32k16 shape: 16 accumulators a thread, d[4 j + 2 i
// + e] = D(16 w + g + 8 i, 8 j + 2 t + e), j < 4): A K-major; TransB: B is MN-major.
template <bool TransB>
__device__ __forceinline__ void mma_ss_n32(float (&d)[16], uint64_t a, uint64_t b, bool accumulate) {
#if PRIME_WGMMA_ENABLED
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %19, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
               "%16, %17, p, 1, 1, 0, %18;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
               : "l"(a), "l"(b), "n"(TransB ? 1 : 0), "r"(static_cast<int>(accumulate)));
#else
  __trap();
#endif
}

#undef PRIME_WGMMA_D32
#undef PRIME_WGMMA_D32_LIST

}  // namespace prime::kernels::detail::wgmma
