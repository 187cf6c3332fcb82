// The forward kernel of GKA's chunked Chebyshev solve for D a multiple of 32 (gka_solve.h has the
// math; gka_solve_kernels.cu has the general wmma kernel this one replaces where it applies).
//
// Same iteration, same order of operations and the same 3xTF32 products as the wmma kernel, but
// written on the raw m16n8k8 TF32 MMA with ldmatrix fragment loads, so that the instructions
// around each MMA are few: the wmma kernel issued ~37 instructions per MMA (fragment loads one
// element at a time, their addresses, the splits), which is what bounded it (kernels/README.md).
// Each warp owns one 16 x 32 block of the iterate for the whole solve: its H x accumulates in
// registers and the Chebyshev update runs there, with x_prev and eta q kept in registers; only
// the new x goes back to shared memory, where the next iteration's products read it.
//
// Shared memory: X [Cp, D], K [Cp, D], H_0^T [D, D] split once into its TF32 hi and lo parts
// (X H_0, the largest product, then splits only X at each read), and P = W o X K^T [Cp, Cp]
// (220 KB at C = 64, D = 128). Per iteration, two block barriers:
//   warps 0..: P's tile (pr, pc) for pc <= pr (the tiles above the diagonal are never read);
//   every warp: Y = e^{G} o X H_0 on its block;
//   barrier; Y += P K over the keys up to its rows' diagonal block (K's rows as B, element
//   loads); the update; barrier.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/cuda_check.cuh"
#include "kernels/gka_solve/gka_chebyshev.cuh"
#include "kernels/gka_solve/gka_mma_fragments.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"

namespace prime::kernels::detail {

namespace {

using namespace gka;
using namespace gka_mma;

constexpr int kThreads = 512;
constexpr int kPad = 4;    // row padding in floats: ldmatrix's eight row addresses hit distinct banks
constexpr int kTiles = 4;  // n8 tiles of a warp's block of the iterate: 32 columns

// Offsets in floats; every buffer and row starts on 16 bytes (ldmatrix's rule).
struct MmaLayout {
  int ld_x, ld_t;  // row strides of the [Cp, D] / [D, D] buffers and of the [Cp, Cp] one
  int x, k, ht_hi, ht_lo, p, floats;

  __host__ __device__ MmaLayout(int padded_chunk, int d) {
    ld_x = d + kPad;
    ld_t = padded_chunk + kPad;
    x = 0;
    k = x + padded_chunk * ld_x;
    ht_hi = k + padded_chunk * ld_x;
    ht_lo = ht_hi + d * ld_x;
    p = ht_lo + d * ld_x;
    floats = p + padded_chunk * ld_t;
  }
};

__global__ void __launch_bounds__(kThreads, 1)
    gka_chunk_solve_mma_kernel(const float* __restrict__ q, const float* __restrict__ keys,
                               const float* __restrict__ start, const float* __restrict__ weights,
                               const float* __restrict__ from_start, const float* __restrict__ frob,
                               float* __restrict__ x_out, float* __restrict__ iterates, int chunk, int dim,
                               int padded_chunk, double ridge_strength, int num_iter, IterateSteps steps) {
  extern __shared__ __align__(128) float smem[];
  const int Cp = padded_chunk;
  const MmaLayout L(Cp, dim);
  const int ld_x = L.ld_x, ld_t = L.ld_t;
  float* X = smem + L.x;
  float* K = smem + L.k;
  float* Ht_hi = smem + L.ht_hi;  // H_0^T (B^T of X H_0), split
  float* Ht_lo = smem + L.ht_lo;
  float* P = smem + L.p;
  const long long m = blockIdx.x;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const size_t cd = static_cast<size_t>(chunk) * dim;
  const float* q_chunk = q + m * cd;
  const float* frob_chunk = frob + m * chunk;
  const float* from_start_chunk = from_start + m * chunk;

  for (int i = tid; i < dim * dim; i += kThreads) {
    uint32_t hi, lo;
    split(__float_as_uint(start[m * dim * dim + i]), hi, lo);
    const int at = (i % dim) * ld_x + i / dim;
    Ht_hi[at] = __uint_as_float(hi);
    Ht_lo[at] = __uint_as_float(lo);
  }
  for (int i = tid; i < Cp * dim; i += kThreads) {
    const int r = i / dim, c = i % dim;
    K[r * ld_x + c] = r < chunk ? keys[m * cd + i] : 0.0f;
  }

  // This warp's block of the iterate: rows rb*16.., columns c0..c0+31 (every element of X has
  // exactly one owner: (Cp/16) (D/32) <= 16 blocks).
  const int groups = dim / 32, blocks = (Cp / 16) * groups;
  const bool owner = warp < blocks;
  const int rb = owner ? warp / groups : 0, c0 = owner ? (warp % groups) * 32 : 0;
  const int row_a = rb * 16 + g, row_b = row_a + 8;  // accumulator rows: elements 0, 1 and 2, 3
  const RowFactors fa(frob_chunk, from_start_chunk, row_a, chunk, ridge_strength);
  const RowFactors fb(frob_chunk, from_start_chunk, row_b, chunk, ridge_strength);
  // eta q and x_prev for the accumulator layout: [tile][element], columns c0 + 8 tile + 2 t4 (+1).
  float eta_q[kTiles][4], x_prev[kTiles][4];
#pragma unroll
  for (int u = 0; u < kTiles; ++u) {
    const int d = c0 + 8 * u + 2 * t4;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int t = e < 2 ? row_a : row_b;
      eta_q[u][e] = owner && t < chunk ? (e < 2 ? fa.eta : fb.eta) * q_chunk[t * dim + d + (e & 1)] : 0.0f;
      x_prev[u][e] = 0.0f;
    }
    if (owner) {
      *reinterpret_cast<float2*>(X + row_a * ld_x + d) = make_float2(eta_q[u][0], eta_q[u][1]);
      *reinterpret_cast<float2*>(X + row_b * ld_x + d) = make_float2(eta_q[u][2], eta_q[u][3]);
    }
  }

  // This warp's tile of P (if any): the lower tiles (pr, pc), pc <= pr, in order; W in registers.
  const int row_blocks = Cp / 16;
  const bool p_owner = warp < row_blocks * (row_blocks + 1) / 2;
  int pr = 0, pc = warp;
  while (pc > pr) pc -= ++pr;
  float w_tile[2][4];
#pragma unroll
  for (int u = 0; u < 2; ++u) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int t = pr * 16 + g + (e < 2 ? 0 : 8), s = pc * 16 + 8 * u + 2 * t4 + (e & 1);
      w_tile[u][e] = p_owner && t < chunk && s < chunk ? weights[m * chunk * chunk + t * chunk + s] : 0.0f;
    }
  }

  ChebyshevOmegas omegas(ridge_strength);
  for (int iteration = 0; iteration < num_iter; ++iteration) {
    const float w = static_cast<float>(omegas.next());
    __syncthreads();  // X holds this iteration's x; the previous iteration's P is read
    if (p_owner) {
      float acc[2][4] = {};
      warp_product<1>(acc, X, ld_x, pr * 16, K, ld_x, pc * 16, dim, lane);
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        float* out = P + (pr * 16 + g) * ld_t + pc * 16 + 8 * u + 2 * t4;
        *reinterpret_cast<float2*>(out) = make_float2(acc[u][0] * w_tile[u][0], acc[u][1] * w_tile[u][1]);
        *reinterpret_cast<float2*>(out + 8 * ld_t) =
            make_float2(acc[u][2] * w_tile[u][2], acc[u][3] * w_tile[u][3]);
      }
    }
    float y[kTiles][4] = {};
    if (owner) {
      warp_product_presplit<kTiles / 2>(y, X, ld_x, rb * 16, Ht_hi, Ht_lo, ld_x, c0, dim, lane);
#pragma unroll
      for (int u = 0; u < kTiles; ++u) {
        y[u][0] *= fa.decay;
        y[u][1] *= fa.decay;
        y[u][2] *= fb.decay;
        y[u][3] *= fb.decay;
      }
    }
    __syncthreads();  // P complete; nothing reads X again this iteration
    if (!owner) continue;
    // Y += P K: P's columns past this row block's diagonal block are zero.
    warp_product_rows<kTiles, false>(y, P, ld_t, rb * 16, K, ld_x, c0, 16 * (rb + 1), lane);
    float* it_out = iterates ? iterates + steps.offset(iteration, m, cd) : nullptr;
#pragma unroll
    for (int u = 0; u < kTiles; ++u) {
      const int d = c0 + 8 * u + 2 * t4;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int t = half ? row_b : row_a;
        const RowFactors& f = half ? fb : fa;
        float2* at = reinterpret_cast<float2*>(X + t * ld_x + d);
        const float2 x = *at;
        if (it_out && t < chunk) *reinterpret_cast<float2*>(it_out + t * dim + d) = x;
        float next[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int e = 2 * half + j;
          const float xj = j ? x.y : x.x;
          // torch's lerp for weights >= 0.5: end - (end - start) (1 - weight).
          const float base = iteration ? eta_q[u][e] - (eta_q[u][e] - x_prev[u][e]) * (1.0f - w) : eta_q[u][e] * w;
          next[j] = base + f.keep * w * xj - f.eta * w * y[u][e];
          x_prev[u][e] = xj;
        }
        *at = make_float2(next[0], next[1]);
      }
    }
  }
  if (!owner) return;
  // Each owner's own elements of the final x (its own writes: no barrier needed).
#pragma unroll
  for (int u = 0; u < kTiles; ++u) {
    const int d = c0 + 8 * u + 2 * t4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int t = half ? row_b : row_a;
      if (t < chunk)
        *reinterpret_cast<float2*>(x_out + m * cd + t * dim + d) = *reinterpret_cast<const float2*>(X + t * ld_x + d);
    }
  }
}

}  // namespace

bool gka_chunk_solve_mma_serves(int64_t C, int64_t D) { return C >= 1 && C <= 64 && D % 32 == 0 && D >= 32 && D <= 128; }

size_t gka_chunk_solve_mma_shared_bytes(int64_t C, int64_t D) {
  return static_cast<size_t>(MmaLayout(static_cast<int>((C + 15) / 16 * 16), static_cast<int>(D)).floats) *
         sizeof(float);
}

void launch_gka_chunk_solve_mma(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                                double ridge_strength, int num_iter, const at::Tensor& x, const at::Tensor& iterates,
                                bool chunk_major) {
  const int64_t M = q.size(0), C = q.size(1), D = q.size(2);
  const IterateSteps steps = chunk_major ? IterateSteps{1, num_iter} : IterateSteps{M, 1};
  PRIME_CHECK(gka_chunk_solve_mma_serves(C, D), "gka_chunk_solve_mma: C = ", C, ", D = ", D, " not served");
  const size_t bytes = gka_chunk_solve_mma_shared_bytes(C, D);
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(gka_chunk_solve_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  gka_chunk_solve_mma_kernel<<<static_cast<unsigned>(M), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<float>(), keys.data_ptr<float>(), start.data_ptr<float>(), weights.data_ptr<float>(),
      from_start.data_ptr<float>(), frob.data_ptr<float>(), x.data_ptr<float>(),
      iterates.defined() ? iterates.data_ptr<float>() : nullptr, static_cast<int>(C), static_cast<int>(D),
      static_cast<int>((C + 15) / 16 * 16), ridge_strength, num_iter, steps);
  PRIME_CUDA_CHECK_LAUNCH("gka_chunk_solve_mma_kernel");
}

}  // namespace prime::kernels::detail
