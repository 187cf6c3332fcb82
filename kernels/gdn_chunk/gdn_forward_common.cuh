// Device pieces GDN's two fused chunked forwards share (gdn_forward_kernels.cu: fp32 operands on
// 3xTF32; gdn_forward_bf16_kernels.cu: bf16 operands on bf16 tensor cores): the chunk shape, the
// chunk's gates and their float64 prefix sums, and the chunk inverse (I + A)^-1 (blockwise: fp32
// substitution on the diagonal blocks; the off-diagonal blocks in fp32, or on TF32 tensor cores for
// the bf16 forward).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/mma_tf32.cuh"
#include "kernels/common/tf32_split.cuh"
#include "kernels/gdn_chunk/gdn_chunk_launch.h"

namespace prime::kernels::detail::gdn_forward {

constexpr int kChunk = static_cast<int>(kGdnForwardChunk);
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kLdC = kChunk + 4;  // row stride of the [64][64] fp32 shared matrices

// gates[t] = g[b, t0 + t, h] (zeros past T), beta_out[t] likewise from beta_in when both are
// given, and gamma[t] = sum_{s<=t} gates[s] in float64 (a difference of two fp32 prefix sums
// would lose digits once |Gamma| is large). g and beta are [B,T,H]. Synchronises.
__device__ __forceinline__ void chunk_gates(const float* g, const float* beta_in, int T, int H, int b, int h,
                                            int t0, double* gamma, float* gates, float* beta_out) {
  const int t = threadIdx.x;
  if (t < kChunk) {
    const bool inside = t0 + t < T;
    const size_t index = (static_cast<size_t>(b) * T + t0 + t) * H + h;
    gates[t] = inside ? g[index] : 0.0f;
    if (beta_out != nullptr) beta_out[t] = inside ? beta_in[index] : 0.0f;
  }
  __syncthreads();
  if (t < kChunk) {  // warps 0 and 1: an inclusive scan of 32 each by shuffles, then warp 1 adds warp 0's total
    double sum = static_cast<double>(gates[t]);
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const double before = __shfl_up_sync(0xffffffffu, sum, offset);
      if (t % 32 >= offset) sum += before;
    }
    gamma[t] = sum;
  }
  __syncthreads();
  if (t >= 32 && t < kChunk) gamma[t] += gamma[31];
  __syncthreads();
}

// tm = (I + A)^-1 for the strictly lower A in am (both [64][kLdC] fp32 in shared memory, am zero
// on and above the diagonal), blockwise over 16x16 blocks (L = I + A, T = L^-1):
//  1. T_ii = L_ii^-1 by forward substitution, warp i for diagonal block i (each lane a column
//     of the block in registers: no syncs); warps 4..7 zero T's upper blocks.
//  2. by distance l = i - j = 1, 2, 3: X_ij = sum_{k=j}^{i-1} A_ik T_kj, then T_ij = -T_ii X_ij.
//     X_ij is kept in am's (zero, unread) upper block (j, i).
// Seven barriers instead of one per row (unit_lower_inverse_64). Needs kThreads = 256; ends with a
// barrier. invert_diagonal_blocks is step 1 of both forms: T's diagonal blocks and zero upper blocks;
// ends with a barrier.
__device__ __forceinline__ void invert_diagonal_blocks(const float* am, float* tm) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp < 4) {
    // Lane c (and c + 16, which repeats its work) holds column c of the block in registers, t[j] =
    // T_jc, so row i, T_ic = -sum_{j<i} A_ij T_jc, waits on no memory: two chains of FMAs by the
    // parity of j - c, added at the end (the terms j < c are zeros and leave each chain +0). Row i
    // of A is read once, the same address in every lane.
    const int base = 16 * warp, column = lane % 16;
    float t[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) t[j] = j == column ? 1.0f : 0.0f;
#pragma unroll
    for (int i = 1; i < 16; ++i) {
      float a[16];
#pragma unroll
      for (int quad = 0; quad < (i + 3) / 4; ++quad) {
        const float4 x = *reinterpret_cast<const float4*>(am + (base + i) * kLdC + base + 4 * quad);
        a[4 * quad] = x.x, a[4 * quad + 1] = x.y, a[4 * quad + 2] = x.z, a[4 * quad + 3] = x.w;
      }
      float even = 0.0f, odd = 0.0f;
#pragma unroll
      for (int j = 0; j < i; ++j) {
        if (((j - column) & 1) == 0)
          even = fmaf(a[j], t[j], even);
        else
          odd = fmaf(a[j], t[j], odd);
      }
      if (column < i) t[i] = -(even + odd);
    }
    if (lane < 16) {
#pragma unroll
      for (int j = 0; j < 16; ++j) tm[(base + j) * kLdC + base + column] = t[j];
    }
  } else {
    for (int index = threadIdx.x - 128; index < 6 * 256; index += 128) {  // upper blocks (j < i) of T
      const int block = index / 256, r = (index % 256) / 16, c = index % 16;
      const int bi = block < 3 ? 0 : (block < 5 ? 1 : 2), bj = block < 3 ? block + 1 : (block < 5 ? block - 1 : 3);
      tm[(16 * bi + r) * kLdC + 16 * bj + c] = 0.0f;
    }
  }
  __syncthreads();
}

__device__ __forceinline__ void unit_lower_inverse_64(float* am, float* tm) {
  invert_diagonal_blocks(am, tm);
  const int r = threadIdx.x / 16, c = threadIdx.x % 16;  // this thread's element of each block
  for (int distance = 1; distance < 4; ++distance) {
    for (int j = 0; j + distance < 4; ++j) {
      const int i = j + distance;
      float sum = 0.0f;
      for (int k = j; k < i; ++k)
        for (int m = 0; m < 16; ++m)
          sum = fmaf(am[(16 * i + r) * kLdC + 16 * k + m], tm[(16 * k + m) * kLdC + 16 * j + c], sum);
      am[(16 * j + r) * kLdC + 16 * i + c] = sum;  // X_ij in the upper block (j, i)
    }
    __syncthreads();
    for (int j = 0; j + distance < 4; ++j) {
      const int i = j + distance;
      float sum = 0.0f;
      for (int m = 0; m <= r; ++m)  // T_ii is unit lower triangular
        sum = fmaf(tm[(16 * i + r) * kLdC + 16 * i + m], am[(16 * j + m) * kLdC + 16 * i + c], sum);
      tm[(16 * i + r) * kLdC + 16 * j + c] = -sum;
    }
    __syncthreads();
  }
}

// acc[u] += A[a_row0.., a_col0..+16] B[b_row0..+16, b_col0 + 8u..+8] for u = 0, 1, one warp, A and
// B row-major [..][kLdC] fp32 in shared memory, on m16n8k8 TF32 MMAs with the operands rounded to
// nearest TF32 (fp32 accumulation). acc[u][e] is (g + 8 (e / 2), 8u + 2t + e % 2), mma_tf32.cuh.
__device__ __forceinline__ void block_product_tf32(float (&acc)[2][4], const float* a, int a_row0, int a_col0,
                                                   const float* b, int b_row0, int b_col0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // cvt.rna keeps a NaN a NaN (the two-integer-operation rounding of tf32_split.cuh is for finite
  // values only); a few conversions per MMA here, where the 3xTF32 kernels' hot loops avoid it.
  const auto tf32 = [](float v) {
    uint32_t bits;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(v));
    return bits;
  };
#pragma unroll
  for (int k0 = 0; k0 < 16; k0 += 8) {
    const float* pa = a + (a_row0 + g) * kLdC + a_col0 + k0 + t;
    const uint32_t fa[4] = {tf32(pa[0]), tf32(pa[8 * kLdC]), tf32(pa[4]), tf32(pa[8 * kLdC + 4])};
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const float* pb = b + (b_row0 + k0 + t) * kLdC + b_col0 + 8 * u + g;
      mma_tf32(acc[u], fa, tf32(pb[0]), tf32(pb[4 * kLdC]));
    }
  }
}

// unit_lower_inverse_64 with step 2's products on the tensor cores (block_product_tf32): warp j
// takes block (j + l, j) of distance l, X_ij through am's upper block (j, i) within the warp, so
// step 2 has three barriers instead of six. For the bf16 forward, whose stored W this moves by
// <= 0.3% of its own bf16 rounding error (experiments/gdn_bf16_inverse); the fp32 forward keeps
// the fp32 form. T's off-diagonal blocks themselves are accurate only to ~1e-4 absolute where keys
// are strongly correlated (harmless for W and U', which the bf16 forward stores; T itself must not be
// saved for a backward from this form). Needs kThreads = 256; ends with a barrier.
__device__ __forceinline__ void unit_lower_inverse_64_tf32(float* am, float* tm) {
  invert_diagonal_blocks(am, tm);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int distance = 1; distance < 4; ++distance) {
    const int j = warp, i = j + distance;
    if (i < 4) {
      float x[2][4] = {};
      for (int m = j; m < i; ++m) block_product_tf32(x, am, 16 * i, 16 * m, tm, 16 * m, 16 * j);  // A_im T_mj
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int half = 0; half < 2; ++half)  // X_ij in the upper block (j, i)
          *reinterpret_cast<float2*>(am + (16 * j + g + 8 * half) * kLdC + 16 * i + 8 * u + 2 * t) =
              make_float2(x[u][2 * half], x[u][2 * half + 1]);
      __syncwarp();
      float y[2][4] = {};
      block_product_tf32(y, tm, 16 * i, 16 * i, am, 16 * j, 16 * i);  // T_ii X_ij
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int half = 0; half < 2; ++half)
          *reinterpret_cast<float2*>(tm + (16 * i + g + 8 * half) * kLdC + 16 * j + 8 * u + 2 * t) =
              make_float2(-y[u][2 * half], -y[u][2 * half + 1]);
    }
    __syncthreads();
  }
}

}  // namespace prime::kernels::detail::gdn_forward
