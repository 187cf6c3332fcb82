// The forward kernel of GKA's chunked Chebyshev solve on the bf16 tensor cores (gka_solve.h has the
// math; gka_solve_mma_kernels.cu the 3xTF32 kernel it mirrors), for D in {32, 64, 96, 128}.
//
// Same iteration, same order of operations as the TF32 kernel; the products X K^T, X H_0 and P K run
// on mma.sync m16n8k16 with fp32 accumulation (bf16_split_tiles.cuh), their operands in shared
// memory as bf16: Terms = 3 keeps each operand as hi + lo parts and takes three MMAs per step
// (bf16x3: fp32-like accuracy at twice 3xTF32's rate), Terms = 1 keeps the hi parts only (one MMA
// per step: the bf16 form, as accurate as bf16 inputs allow). The iterate, x_prev, eta q, H x and
// the Chebyshev update stay in fp32 registers: each warp owns one 16 x 32 block of the iterate for
// the whole solve and writes only its bf16 parts back to shared memory for the next products.
//
// Shared memory, Terms times (hi, lo): X [Cp, D], K [Cp, D], H_0 [D, D], P = W o X K^T [Cp, Cp]
// (78 KB at C = 64, D = 128 for Terms = 1; 157 KB for Terms = 3). Per iteration, two barriers:
//   warps 0..9: P's lower tile (pr, pc), pc <= pr (the tiles above the diagonal are never read);
//   every owner: Y = e^{G} o X H_0 on its block;
//   barrier; Y += P K over the keys up to its rows' diagonal block; the update; barrier.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/bf16_split_tiles.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/gka_solve/gka_chebyshev.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"

namespace prime::kernels::detail {

namespace {

using namespace gka;
using namespace bf16_tiles;

constexpr int kThreads = 512;
constexpr int kTiles = 2;  // 16 x 16 tiles of a warp's block of the iterate: 32 columns

// Element offsets of the bf16 shared matrices, each `terms` parts of `size` elements (hi, then lo),
// then the fp32 iterate [Cp][ld_f] (each owner's own elements: registers would spill).
struct Bf16Layout {
  int terms, ld_d, ld_p, ld_f;
  int x, k, h, p, elements;
  int x_size, h_size, p_size;
  size_t bytes;

  __host__ __device__ Bf16Layout(int padded_chunk, int d, int terms_) : terms(terms_) {
    ld_d = ld_of(d);
    ld_p = ld_of(padded_chunk);
    x_size = padded_chunk * ld_d;
    h_size = d * ld_d;
    p_size = padded_chunk * ld_p;
    x = 0;
    k = x + terms * x_size;
    h = k + terms * x_size;
    p = h + terms * h_size;
    elements = p + terms * p_size;  // a multiple of 8: the fp32 iterate starts on 16 bytes
    ld_f = d + 8;                    // a warp's float2 accesses to its 8 x 8 pairs in two wavefronts
    bytes = static_cast<size_t>(elements) * 2 + static_cast<size_t>(padded_chunk) * ld_f * 4;
  }

  __device__ SplitMatrix part(Bf16* base, int offset, int size) const {
    return {base + offset, terms == 3 ? base + offset + size : nullptr};
  }
};

// dst [rows][cols] (row stride ld) <- the fp32 rows of src (row stride cols), split; rows at or past
// `valid` are zeros (not read).
template <int Terms>
__device__ __forceinline__ void load_split(const SplitMatrix& dst, int ld, const float* src, int rows, int valid,
                                           int cols) {
  const int pairs = cols / 2;
  for (int i = static_cast<int>(threadIdx.x); i < rows * pairs; i += kThreads) {
    const int r = i / pairs, c = 2 * (i % pairs);
    const float2 value = r < valid ? *reinterpret_cast<const float2*>(src + r * cols + c) : make_float2(0.0f, 0.0f);
    store_split<Terms>(dst, r * ld + c, value.x, value.y);
  }
}

// Calls f(j, e, row, col) for the lane's pairs of the 16 x 32 block at (row0, col0): elements e and
// e + 1 of the block's tile j (bf16_tiles' accumulator layout) at (row, col) and (row, col + 1).
template <typename F>
__device__ __forceinline__ void for_each_block_pair(int row0, int col0, F&& f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 8; e += 2) f(j, e, row0 + g + 8 * ((e / 2) % 2), col0 + 16 * j + 8 * (e / 4) + 2 * t);
  }
}

template <int D, int Terms>
__global__ void __launch_bounds__(kThreads, 1)
    gka_chunk_solve_bf16_kernel(const float* __restrict__ q, const float* __restrict__ keys,
                                const float* __restrict__ start, const float* __restrict__ weights,
                                const float* __restrict__ from_start, const float* __restrict__ frob,
                                float* __restrict__ x_out, float* __restrict__ iterates, int chunk, int padded_chunk,
                                double ridge_strength, int num_iter, long long chunks) {
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  Bf16* smem = reinterpret_cast<Bf16*>(smem_bytes);
  const int Cp = padded_chunk;
  const Bf16Layout L(Cp, D, Terms);
  const int ld_d = L.ld_d, ld_p = L.ld_p;
  const SplitMatrix X = L.part(smem, L.x, L.x_size), K = L.part(smem, L.k, L.x_size),
                    H = L.part(smem, L.h, L.h_size), P = L.part(smem, L.p, L.p_size);
  float* const Xf = reinterpret_cast<float*>(smem + L.elements);
  const int ld_f = L.ld_f;
  const long long m = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const size_t cd = static_cast<size_t>(chunk) * D;

  load_split<Terms>(K, ld_d, keys + m * cd, Cp, chunk, D);
  load_split<Terms>(H, ld_d, start + m * D * D, D, D, D);

  // This warp's block of the iterate: rows 16 rb.., columns c0..c0 + 31 (every element of X has
  // exactly one owner: (Cp / 16) (D / 32) <= 16 blocks).
  constexpr int kGroups = D / 32;
  const bool owner = warp < (Cp / 16) * kGroups;
  const int rb = owner ? warp / kGroups : 0, c0 = owner ? (warp % kGroups) * 32 : 0;
  const RowFactors rows[2] = {
      RowFactors(frob + m * chunk, from_start + m * chunk, 16 * rb + g, chunk, ridge_strength),
      RowFactors(frob + m * chunk, from_start + m * chunk, 16 * rb + g + 8, chunk, ridge_strength)};
  // eta q and x_prev in the accumulator layout of the warp's two tiles; the iterate in Xf.
  Acc eta_q[kTiles], x_prev[kTiles];
  for_each_block_pair(16 * rb, c0, [&](int j, int e, int row, int col) {
    const float eta = rows[(e / 2) % 2].eta;
    const float2 value =
        owner && row < chunk ? *reinterpret_cast<const float2*>(q + m * cd + row * D + col) : make_float2(0.0f, 0.0f);
    eta_q[j].x[e] = eta * value.x;
    eta_q[j].x[e + 1] = eta * value.y;
    x_prev[j].x[e] = x_prev[j].x[e + 1] = 0.0f;
    if (!owner) return;
    *reinterpret_cast<float2*>(Xf + row * ld_f + col) = make_float2(eta_q[j].x[e], eta_q[j].x[e + 1]);
    store_split<Terms>(X, row * ld_d + col, eta_q[j].x[e], eta_q[j].x[e + 1]);
  });

  // This warp's tile of P (if any): the lower tiles (pr, pc), pc <= pr, in order; W in registers.
  const int row_blocks = Cp / 16;
  const bool p_owner = warp < row_blocks * (row_blocks + 1) / 2;
  int pr = 0, pc = warp;
  while (pc > pr) pc -= ++pr;
  Acc w_tile;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int t = 16 * pr + g + 8 * ((e / 2) % 2), s = 16 * pc + 8 * (e / 4) + 2 * t4 + e % 2;
    w_tile.x[e] = p_owner && t < chunk && s < chunk ? weights[m * chunk * chunk + t * chunk + s] : 0.0f;
  }

  ChebyshevOmegas omegas(ridge_strength);
  for (int iteration = 0; iteration < num_iter; ++iteration) {
    const float w = static_cast<float>(omegas.next());
    __syncthreads();  // X holds this iteration's x; the previous iteration's P is read
    if (p_owner) {
      Acc p[1];
      fill(p[0], 0.0f);
      split_row_block_product<Terms, 1, /*Transposed=*/true>(p, X, 16 * pr * ld_d, ld_d, D, K, ld_d, 16 * pc);
#pragma unroll
      for (int e = 0; e < 8; e += 2) {
        const int row = 16 * pr + g + 8 * ((e / 2) % 2), col = 16 * pc + 8 * (e / 4) + 2 * t4;
        store_split<Terms>(P, row * ld_p + col, p[0].x[e] * w_tile.x[e], p[0].x[e + 1] * w_tile.x[e + 1]);
      }
    }
    Acc y[kTiles];
    if (owner) {
#pragma unroll
      for (int j = 0; j < kTiles; ++j) fill(y[j], 0.0f);
      split_row_block_product<Terms, kTiles>(y, X, 16 * rb * ld_d, ld_d, D, H, ld_d, c0);
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 8; ++e) y[j].x[e] *= rows[(e / 2) % 2].decay;
      }
    }
    __syncthreads();  // P complete; nothing reads X again this iteration
    if (!owner) continue;
    // Y += P K: P's columns past this row block's diagonal block are zero.
    split_row_block_product<Terms, kTiles>(y, P, 16 * rb * ld_p, ld_p, 16 * (rb + 1), K, ld_d, c0);
    float* it_out = iterates ? iterates + (static_cast<size_t>(iteration) * chunks + m) * cd : nullptr;
    for_each_block_pair(16 * rb, c0, [&](int j, int e, int row, int col) {
      const RowFactors& f = rows[(e / 2) % 2];
      float2* at = reinterpret_cast<float2*>(Xf + row * ld_f + col);
      const float2 x = *at;
      if (it_out && row < chunk) *reinterpret_cast<float2*>(it_out + row * D + col) = x;
      float next[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int s = e + i;
        const float xs = i ? x.y : x.x;
        // torch's lerp for weights >= 0.5: end - (end - start) (1 - weight).
        const float base =
            iteration ? eta_q[j].x[s] - (eta_q[j].x[s] - x_prev[j].x[s]) * (1.0f - w) : eta_q[j].x[s] * w;
        next[i] = base + f.keep * w * xs - f.eta * w * y[j].x[s];
        x_prev[j].x[s] = xs;
      }
      *at = make_float2(next[0], next[1]);
      store_split<Terms>(X, row * ld_d + col, next[0], next[1]);
    });
  }
  if (!owner) return;
  // Each owner's own elements of the final x (its own writes: no barrier needed).
  for_each_block_pair(16 * rb, c0, [&](int, int, int row, int col) {
    if (row < chunk)
      *reinterpret_cast<float2*>(x_out + m * cd + row * D + col) =
          *reinterpret_cast<const float2*>(Xf + row * ld_f + col);
  });
}

template <int D, int Terms>
void launch_typed(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start, const at::Tensor& weights,
                  const at::Tensor& from_start, const at::Tensor& frob, double ridge_strength, int num_iter,
                  const at::Tensor& x, const at::Tensor& iterates) {
  const int64_t M = q.size(0), C = q.size(1);
  const size_t bytes = gka_chunk_solve_bf16_shared_bytes(C, D, Terms);
  const auto kernel = gka_chunk_solve_bf16_kernel<D, Terms>;
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  kernel<<<static_cast<unsigned>(M), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<float>(), keys.data_ptr<float>(), start.data_ptr<float>(), weights.data_ptr<float>(),
      from_start.data_ptr<float>(), frob.data_ptr<float>(), x.data_ptr<float>(),
      iterates.defined() ? iterates.data_ptr<float>() : nullptr, static_cast<int>(C),
      static_cast<int>((C + 15) / 16 * 16), ridge_strength, num_iter, static_cast<long long>(M));
  PRIME_CUDA_CHECK_LAUNCH("gka_chunk_solve_bf16_kernel");
}

template <int Terms>
void launch_terms(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start, const at::Tensor& weights,
                  const at::Tensor& from_start, const at::Tensor& frob, double ridge_strength, int num_iter,
                  const at::Tensor& x, const at::Tensor& iterates) {
  switch (q.size(2)) {
    case 32:
      return launch_typed<32, Terms>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates);
    case 64:
      return launch_typed<64, Terms>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates);
    case 96:
      return launch_typed<96, Terms>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates);
    default:
      return launch_typed<128, Terms>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x,
                                      iterates);
  }
}

}  // namespace

bool gka_chunk_solve_bf16_serves(int64_t C, int64_t D) {
  return C >= 1 && C <= 64 && D % 32 == 0 && D >= 32 && D <= 128;
}

size_t gka_chunk_solve_bf16_shared_bytes(int64_t C, int64_t D, int terms) {
  return Bf16Layout(static_cast<int>((C + 15) / 16 * 16), static_cast<int>(D), terms).bytes;
}

void launch_gka_chunk_solve_bf16(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                 const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                                 double ridge_strength, int num_iter, const at::Tensor& x, const at::Tensor& iterates,
                                 int terms) {
  const int64_t C = q.size(1), D = q.size(2);
  PRIME_CHECK(gka_chunk_solve_bf16_serves(C, D) && (terms == 1 || terms == 3), "gka_chunk_solve_bf16: C = ", C,
              ", D = ", D, ", ", terms, " terms not served");
  if (terms == 3)
    launch_terms<3>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates);
  else
    launch_terms<1>(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, x, iterates);
}

}  // namespace prime::kernels::detail
