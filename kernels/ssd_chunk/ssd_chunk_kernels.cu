// CUDA kernels of Mamba-2's chunked SSD scan (see ssd_chunk.h for the math, ssd_chunk_launch.h
// for the operands). fp32 throughout; 64-step chunks. Two implementations of the products: the
// tensor-core kernels (P and N multiples of 16; 3xTF32 wmma, one block per chunk and batch and
// head computing every column) and the SIMT kernels (any P, N <= 128; one 256-thread block per
// (chunk, batch and head, 64-column tile), each thread owning a 4x4 tile of the block's 64x64
// product: rows ty + 16i, columns tx + 16j, conflict-free shared-memory reads).
//
// Decays: Gamma (the chunk-local cumulative sum of the fp32 products delta*A) is summed in
// float64, so e^{Gamma_t - Gamma_j} is as accurate as the direct segment sums of the torch form
// (a difference of two fp32 prefix sums would lose digits once |Gamma| is large). Every exponent
// is <= 0: e^{Gamma_t - Gamma_j} is only formed for j <= t, and e^{Gamma_end - Gamma_t} and
// e^{Gamma_t} are decays too.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/switches.h"
#include "kernels/common/prefetch.cuh"
#include "kernels/common/restart_segments.cuh"
#include "kernels/common/tf32x3_mma.cuh"
#include "kernels/ssd_chunk/ssd_chunk_common.cuh"
#include "kernels/ssd_chunk/ssd_chunk_launch.h"

namespace prime::kernels::detail {

namespace {

namespace wmma = nvcuda::wmma;
using ssd_common::chunk_gamma;
using ssd_common::DeltaView;
using ssd_common::make_delta_view;

constexpr int kChunk = static_cast<int>(kSsdChunk);
constexpr int kTile = 64;  // output columns per block
constexpr int kThreads = 256;
constexpr int kPad = kTile + 1;  // row stride of the 64-wide shared tiles

// A time-major operand [B,T,H,K] read through its strides (a stride may be 0).
struct View {
  const float* data = nullptr;
  long long s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  bool vec4 = false;  // unit element stride, other strides and the base on 16 bytes, K % 4 == 0
  __device__ __forceinline__ float at(int b, int t, int h, int k) const {
    return data[b * s0 + t * s1 + h * s2 + k * s3];
  }
};

View make_view(const at::Tensor& tensor) {
  View view;
  if (!tensor.defined()) return view;
  view.data = tensor.data_ptr<float>();
  view.s0 = tensor.stride(0), view.s1 = tensor.stride(1), view.s2 = tensor.stride(2), view.s3 = tensor.stride(3);
  view.vec4 = view.s3 == 1 && view.s0 % 4 == 0 && view.s1 % 4 == 0 && view.s2 % 4 == 0 && tensor.size(3) % 4 == 0 &&
              reinterpret_cast<std::uintptr_t>(view.data) % 16 == 0;
  return view;
}

// ---- per-chunk state products ----------------------------------------------------------------
// out[bh, chunk][p][n] = sum_t u[t][p] f_t v[t][n] over one 64x64 (p, n) tile.
__global__ void __launch_bounds__(kThreads)
ssd_chunk_states_kernel(View u, View v, DeltaView delta, const float* __restrict__ A, int T, int H,
                        int num_chunks, int P, int N, int tiles_n, bool to_end, float* __restrict__ out,
                        float* __restrict__ decay) {
  __shared__ double gamma[kChunk];
  __shared__ float dl[kChunk], factor[kChunk];
  __shared__ float us[kChunk][kPad], vs[kChunk][kPad];
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
  const int p0 = (blockIdx.z / tiles_n) * kTile, n0 = (blockIdx.z % tiles_n) * kTile;
  const int t0 = chunk * kChunk, thread = threadIdx.x;
  chunk_gamma(delta, A, b, h, t0, T, gamma, dl);
  __syncthreads();
  if (thread < kChunk) {
    factor[thread] = to_end ? dl[thread] * expf(static_cast<float>(gamma[kChunk - 1] - gamma[thread]))
                            : expf(static_cast<float>(gamma[thread]));
    if (thread == 0 && decay != nullptr && blockIdx.z == 0)
      decay[static_cast<size_t>(bh) * num_chunks + chunk] = expf(static_cast<float>(gamma[kChunk - 1]));
  }
  __syncthreads();
  for (int index = thread; index < kChunk * kTile; index += kThreads) {
    const int t = index / kTile, c = index % kTile;
    const bool row = t0 + t < T;
    us[t][c] = row && p0 + c < P ? u.at(b, t0 + t, h, p0 + c) * factor[t] : 0.0f;
    vs[t][c] = row && n0 + c < N ? v.at(b, t0 + t, h, n0 + c) : 0.0f;
  }
  __syncthreads();
  const int tx = thread % 16, ty = thread / 16;
  float acc[4][4] = {};
#pragma unroll 4
  for (int t = 0; t < kChunk; ++t) {
    float a[4], w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = us[t][ty + 16 * i], w[i] = vs[t][tx + 16 * i];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
  }
  float* out_chunk = out + (static_cast<size_t>(bh) * num_chunks + chunk) * P * N;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int p = p0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (p < P && n < N) out_chunk[static_cast<size_t>(p) * N + n] = acc[i][j];
    }
}

// ---- the walk over chunks --------------------------------------------------------------------
// One thread per W consecutive state elements of one (batch, head) (W = 4: 16-byte accesses);
// the next chunk's values are loaded before the current ones are stored. With restart flags, the
// segments between them are walked independently (kernels/common/restart_segments.cuh), block
// slot blockIdx.z taking its share.
__device__ __forceinline__ float scan_step(float d, float s, float value) { return fmaf(d, s, value); }
__device__ __forceinline__ float4 scan_step(float d, float4 s, float4 value) {
  return make_float4(fmaf(d, s.x, value.x), fmaf(d, s.y, value.y), fmaf(d, s.z, value.z), fmaf(d, s.w, value.w));
}

template <int W>
__global__ void __launch_bounds__(kThreads)
ssd_state_scan_kernel(float* __restrict__ buffer, const float* __restrict__ decay,
                      const float* __restrict__ initial, const bool* __restrict__ restart,
                      const int* __restrict__ segment_begins, float* __restrict__ final_state, int num_chunks,
                      int elements, bool reverse) {
  using Vec = std::conditional_t<W == 4, float4, float>;
  const int element = (blockIdx.x * kThreads + threadIdx.x) * W;
  if (element >= elements) return;
  const size_t m = blockIdx.y;
  Vec* base = reinterpret_cast<Vec*>(buffer + m * num_chunks * elements + element);
  const size_t stride = static_cast<size_t>(elements / W);  // one chunk, in Vecs
  const float* decay_m = decay + m * num_chunks;
  for_each_restart_segment(segment_begins, num_chunks, blockIdx.z, gridDim.z,
                           [&](int begin, int end, bool first, bool last) {
    Vec s{};
    if (initial != nullptr && (reverse ? last : first))
      s = *reinterpret_cast<const Vec*>(initial + m * elements + element);
    int n = reverse ? end - 1 : begin;
    const int step = reverse ? -1 : 1, length = end - begin;
    Vec value = base[static_cast<size_t>(n) * stride];
    for (int walked = 0; walked < length; ++walked, n += step) {
      Vec next{};
      if (walked + 1 < length) next = base[static_cast<size_t>(n + step) * stride];
      const bool restarts = restart != nullptr && restart[n];
      if (restarts && !reverse) s = Vec{};  // the state entering a restarting chunk is zero
      base[static_cast<size_t>(n) * stride] = s;
      s = scan_step(decay_m[n], s, value);
      if (restarts && reverse) s = Vec{};  // so nothing flows back past it
      value = next;
    }
    if (reverse ? first : last) *reinterpret_cast<Vec*>(final_state + m * elements + element) = s;
  });
}

// ---- the in-chunk product (see SsdMixOperands) -----------------------------------------------
struct MixParams {
  View fa, fb, u, aux;
  DeltaView delta;
  const float* A;
  const float* state;
  float* out;
  float *partial_full, *partial_state, *partial_pair;
  int B, T, H, num_chunks, inner, inner_stride, cols, P, N;
  bool fb_delta, transpose, u_delta, v_is_fb, state_transposed, out_delta, to_end, has_aux;
};

size_t mix_shared_bytes(int inner_stride) {
  return kChunk * sizeof(double) + (2 * kChunk + 2 * kChunk * inner_stride + 4 * kChunk * kPad) * sizeof(float);
}

__global__ void __launch_bounds__(kThreads) ssd_chunk_mix_kernel(const MixParams p) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* dl = reinterpret_cast<float*>(gamma + kChunk);      // [64]
  float* factor = dl + kChunk;                               // [64]
  float* fa = factor + kChunk;                               // [64][inner_stride]
  float* fb = fa + kChunk * p.inner_stride;                  // [64][inner_stride]
  float* mat = fb + kChunk * p.inner_stride;                 // [64][kPad]
  float* us = mat + kChunk * kPad;                           // [64][kPad]
  float* aux = us + kChunk * kPad;                           // [64][kPad]
  float* pair = aux + kChunk * kPad;                         // [64][kPad]
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh % p.H, tile = blockIdx.z;
  const int t0 = chunk * kChunk, c0 = tile * kTile, thread = threadIdx.x;
  const int K = p.inner, ld = p.inner_stride;
  chunk_gamma(p.delta, p.A, b, h, t0, p.T, gamma, dl);
  __syncthreads();
  if (thread < kChunk)
    factor[thread] = p.to_end ? expf(static_cast<float>(gamma[kChunk - 1] - gamma[thread]))
                              : expf(static_cast<float>(gamma[thread]));
  for (int index = thread; index < kChunk * K; index += kThreads) {
    const int t = index / K, i = index % K;
    const bool row = t0 + t < p.T;
    fa[t * ld + i] = row ? p.fa.at(b, t0 + t, h, i) : 0.0f;
    const float value = row ? p.fb.at(b, t0 + t, h, i) : 0.0f;
    fb[t * ld + i] = p.fb_delta ? value * dl[t] : value;
  }
  for (int index = thread; index < kChunk * kTile; index += kThreads) {
    const int t = index / kTile, c = index % kTile;
    const bool inside = t0 + t < p.T && c0 + c < p.cols;
    const float value = inside ? p.u.at(b, t0 + t, h, c0 + c) : 0.0f;
    us[t * kPad + c] = p.u_delta ? value * dl[t] : value;
    if (p.has_aux) aux[t * kPad + c] = inside ? p.aux.at(b, t0 + t, h, c0 + c) : 0.0f;
  }
  __syncthreads();

  // M[r][k]: (t, j) = (r, k), or (k, r) when transposed; zero above the diagonal j > t.
  for (int index = thread; index < kChunk * kChunk; index += kThreads) {
    const int r = index / kChunk, k = index % kChunk;
    const int t = p.transpose ? k : r, j = p.transpose ? r : k;
    float value = 0.0f;
    if (j <= t) {
      const float* a = fa + t * ld;
      const float* w = fb + j * ld;
      float dot = 0.0f;
#pragma unroll 4
      for (int i = 0; i < K; ++i) dot = fmaf(a[i], w[i], dot);
      value = dot * expf(static_cast<float>(gamma[t] - gamma[j]));
    }
    mat[r * kPad + k] = value;
  }
  __syncthreads();

  // The chunk's state slice into the operand slot v does not use: st[c][i].
  float* st = p.v_is_fb ? fa : fb;
  const float* v = p.v_is_fb ? fb : fa;
  const float* state = p.state + (static_cast<size_t>(bh) * p.num_chunks + chunk) * p.P * p.N;
  if (!p.state_transposed) {
    for (int index = thread; index < kTile * K; index += kThreads) {  // c along P, i along N
      const int c = index / K, i = index % K;
      st[c * ld + i] = c0 + c < p.cols ? state[static_cast<size_t>(c0 + c) * p.N + i] : 0.0f;
    }
  } else {
    for (int index = thread; index < kTile * K; index += kThreads) {  // c along N, i along P
      const int i = index / kTile, c = index % kTile;
      st[c * ld + i] = c0 + c < p.cols ? state[static_cast<size_t>(i) * p.N + c0 + c] : 0.0f;
    }
  }
  if (p.partial_pair != nullptr) {
    // m[t][j] = M[j][t] delta_j (u_t . aux_j) over this tile's columns, j < t.
    for (int index = thread; index < kChunk * kChunk; index += kThreads) {
      const int t = index / kChunk, j = index % kChunk;
      float value = 0.0f;
      if (j < t) {
        float dot = 0.0f;
#pragma unroll 8
        for (int c = 0; c < kTile; ++c) dot = fmaf(us[t * kPad + c], aux[j * kPad + c], dot);
        value = mat[j * kPad + t] * dl[j] * dot;
      }
      pair[t * kPad + j] = value;
    }
  }
  __syncthreads();

  const int tx = thread % 16, ty = thread / 16;
  float intra[4][4] = {}, through[4][4] = {};
#pragma unroll 4
  for (int k = 0; k < kChunk; ++k) {
    float a[4], w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = mat[(ty + 16 * i) * kPad + k], w[i] = us[k * kPad + tx + 16 * i];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) intra[i][j] = fmaf(a[i], w[j], intra[i][j]);
  }
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float a[4], w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = v[(ty + 16 * i) * ld + k], w[i] = st[(tx + 16 * i) * ld + k];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) through[i][j] = fmaf(a[i], w[j], through[i][j]);
  }

  const size_t partial_row0 = ((static_cast<size_t>(tile) * p.B + b) * p.H + h) * p.num_chunks * kChunk +
                              static_cast<size_t>(chunk) * kChunk;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + 16 * i, t = t0 + r;
    float full = 0.0f, from_state = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = tx + 16 * j;
      const float s = factor[r] * through[i][j];
      const float value = intra[i][j] + s;
      if (t < p.T && c0 + c < p.cols)
        p.out[((static_cast<size_t>(b) * p.T + t) * p.H + h) * p.cols + c0 + c] = p.out_delta ? dl[r] * value : value;
      if (p.has_aux) {
        const float a = aux[r * kPad + c];
        full = fmaf(a, value, full);
        from_state = fmaf(a, s, from_state);
      }
    }
    if (p.partial_full != nullptr || p.partial_state != nullptr) {
      // The row's 16 threads are lanes tx = 0..15 of one half-warp: a fixed-order tree sum.
#pragma unroll
      for (int offset = 8; offset > 0; offset >>= 1) {
        full += __shfl_xor_sync(0xffffffffu, full, offset);
        from_state += __shfl_xor_sync(0xffffffffu, from_state, offset);
      }
      if (tx == 0) {
        if (p.partial_full != nullptr) p.partial_full[partial_row0 + r] = full;
        if (p.partial_state != nullptr) p.partial_state[partial_row0 + r] = from_state;
      }
    }
  }
  if (p.partial_pair != nullptr && thread < kChunk) {
    float sum = 0.0f;
    for (int j = 0; j < kChunk; ++j) sum += pair[thread * kPad + j];
    for (int t = 0; t < kChunk; ++t) sum -= pair[t * kPad + thread];
    p.partial_pair[partial_row0 + thread] = sum;
  }
}

// ---- tensor-core kernels (P and N multiples of 16) -------------------------------------------
// The products above as 3xTF32 wmma matmuls (kernels/common/tf32x3_mma.cuh: fp32 accuracy). One
// block per (chunk, batch and head) computes every column, so the chunk matrix M is formed once.
// Shared operands are row-major with a row stride of (their width + 4) floats, a multiple of 4
// that is not one of 32: rows start 32-byte aligned and the wmma loads spread over the banks.

using tf32x3::FragA;
using tf32x3::FragB;
using tf32x3::FragC;
using tf32x3::split_tf32;

constexpr int kStatesWarps = 8;
constexpr int kMixWarps = 16;  // one block per SM (up to 171 KB of shared memory): its warps hide the latencies
constexpr int kLdM = kChunk + 4;

__host__ __device__ constexpr int padded_ld(int width) { return width + 4; }

// dst[t][i] (row stride ld) = view(b, t0 + t, h, i) * (row_scale ? row_scale[t] : 1) for t < 64,
// i < K; rows at or past T are zeros. 16-byte loads and stores where the view allows.
__device__ __forceinline__ void load_chunk_rows(float* dst, int ld, const View& view, int b, int t0, int h, int T,
                                                int K, const float* row_scale, int threads) {
  const long long base = b * view.s0 + h * view.s2;
  if (view.vec4) {
    const int K4 = K / 4;
    for (int index = threadIdx.x; index < kChunk * K4; index += threads) {
      const int t = index / K4, i = (index - t * K4) * 4;
      float4 value = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (t0 + t < T) value = __ldg(reinterpret_cast<const float4*>(view.data + base + (t0 + t) * view.s1 + i));
      if (row_scale != nullptr) {
        const float s = row_scale[t];
        value.x *= s, value.y *= s, value.z *= s, value.w *= s;
      }
      *reinterpret_cast<float4*>(dst + t * ld + i) = value;
    }
  } else {
    for (int index = threadIdx.x; index < kChunk * K; index += threads) {
      const int t = index / K, i = index - t * K;
      float value = t0 + t < T ? view.data[base + (t0 + t) * view.s1 + i * view.s3] : 0.0f;
      if (row_scale != nullptr) value *= row_scale[t];
      dst[t * ld + i] = value;
    }
  }
}

// out[bh, chunk] [P, N] = U^T V with U [64][P] (u's rows times f_t) and V [64][N] in shared
// memory; the warps share the 16 x (16 NT) output tiles and store them straight to global memory.
template <int NT>
__device__ __forceinline__ void states_tiles(float* out_chunk, const float* us, int ldu, const float* vs, int ldv,
                                             int P, int N) {
  const int warp = threadIdx.x / 32;
  const int groups = N / (16 * NT), tasks = (P / 16) * groups;
  for (int task = warp; task < tasks; task += kStatesWarps) {
    const int row0 = (task / groups) * 16, col0 = (task % groups) * 16 * NT;
    FragC acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) wmma::fill_fragment(acc[t], 0.0f);
    tf32x3::warp_gemm<NT, wmma::col_major, wmma::row_major>(acc, us + row0, ldu, vs, ldv, kChunk, col0);
#pragma unroll
    for (int t = 0; t < NT; ++t)
      wmma::store_matrix_sync(out_chunk + static_cast<size_t>(row0) * N + col0 + 16 * t, acc[t], N,
                              wmma::mem_row_major);
  }
}

size_t states_tc_shared_bytes(int P, int N) {
  return kChunk * sizeof(double) + 2 * kChunk * sizeof(float) +
         static_cast<size_t>(kChunk) * (padded_ld(P) + padded_ld(N)) * sizeof(float);
}

__global__ void __launch_bounds__(kStatesWarps * 32)
ssd_chunk_states_tc_kernel(View u, View v, DeltaView delta, const float* __restrict__ A, int T, int H,
                           int num_chunks, int P, int N, bool to_end, float* __restrict__ out,
                           float* __restrict__ decay) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* dl = reinterpret_cast<float*>(gamma + kChunk);      // [64]
  float* factor = dl + kChunk;                               // [64]
  float* us = factor + kChunk;                               // [64][P + 4], 1 KB in: 32-byte aligned
  float* vs = us + kChunk * padded_ld(P);                    // [64][N + 4]
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, t0 = chunk * kChunk;
  chunk_gamma(delta, A, b, h, t0, T, gamma, dl);
  __syncthreads();
  if (threadIdx.x < kChunk) {
    const int t = threadIdx.x;
    factor[t] = to_end ? dl[t] * expf(static_cast<float>(gamma[kChunk - 1] - gamma[t]))
                       : expf(static_cast<float>(gamma[t]));
    if (t == 0 && decay != nullptr)
      decay[static_cast<size_t>(bh) * num_chunks + chunk] = expf(static_cast<float>(gamma[kChunk - 1]));
  }
  __syncthreads();
  load_chunk_rows(us, padded_ld(P), u, b, t0, h, T, P, factor, kStatesWarps * 32);
  load_chunk_rows(vs, padded_ld(N), v, b, t0, h, T, N, nullptr, kStatesWarps * 32);
  __syncthreads();
  float* out_chunk = out + (static_cast<size_t>(bh) * num_chunks + chunk) * P * N;
  if (N % 64 == 0)
    states_tiles<4>(out_chunk, us, padded_ld(P), vs, padded_ld(N), P, N);
  else if (N % 32 == 0)
    states_tiles<2>(out_chunk, us, padded_ld(P), vs, padded_ld(N), P, N);
  else
    states_tiles<1>(out_chunk, us, padded_ld(P), vs, padded_ld(N), P, N);
}

// acc[s] += A[16 rows, 0:depth] B[0:depth, col_s : +16] for s < (two ? 2 : 1), 3xTF32, the A
// fragments shared by both tiles (A row-major, or col-major for A = M^T with `A` at M's column of
// the first row; B row-major, or col-major for B = M^T).
template <typename MajorB, typename MajorA = wmma::row_major>
__device__ __forceinline__ void warp_gemm_pair(FragC (&acc)[2], bool two, const float* A, int lda, const float* B,
                                               int ldb, int depth, int col0, int col1) {
  constexpr bool kRowA = std::is_same<MajorA, wmma::row_major>::value;
  constexpr bool kRowB = std::is_same<MajorB, wmma::row_major>::value;
  for (int k0 = 0; k0 < depth; k0 += 8) {
    FragA<MajorA> a_hi, a_lo;
    wmma::load_matrix_sync(a_hi, kRowA ? A + k0 : A + k0 * lda, lda);
    split_tf32(a_hi, a_lo);
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      if (s == 1 && !two) break;
      const int col = s == 0 ? col0 : col1;
      FragB<MajorB> b_hi, b_lo;
      wmma::load_matrix_sync(b_hi, kRowB ? B + k0 * ldb + col : B + col * ldb + k0, ldb);
      split_tf32(b_hi, b_lo);
      wmma::mma_sync(acc[s], a_lo, b_hi, acc[s]);  // small terms first
      wmma::mma_sync(acc[s], a_hi, b_lo, acc[s]);
      wmma::mma_sync(acc[s], a_hi, b_hi, acc[s]);
    }
  }
}

// M lives in the fa/fb slot that v is not (free once G is formed) when its rows are wide enough.
__host__ __device__ constexpr bool mat_in_free_slot(int ld) { return ld >= kLdM; }

size_t mix_tc_shared_bytes(int ld, bool has_aux, bool has_state_part, bool has_pair) {
  const int wide = 3 + (has_aux ? 1 : 0) + (has_state_part ? 1 : 0);
  const int narrow = (mat_in_free_slot(ld) ? 0 : 1) + (has_pair ? 1 : 0);
  return kChunk * sizeof(double) + 2 * kChunk * sizeof(float) +
         static_cast<size_t>(kChunk) * (static_cast<size_t>(ld) * wide + kLdM * narrow) * sizeof(float);
}

// out [64][kLdM] = a b^T over the 16x16 tiles on or below the diagonal (zeros above), 3xTF32,
// with a, b [64][ld] row-major in shared memory and `depth` columns deep; one tile per warp of 16.
__device__ __forceinline__ void lower_tiles_abt(float* out, const float* a, const float* b, int ld, int depth,
                                                int warp) {
  const int row = warp / 4, col = warp % 4;
  FragC acc[1];
  wmma::fill_fragment(acc[0], 0.0f);
  if (col <= row)
    tf32x3::warp_gemm<1, wmma::row_major, wmma::col_major>(acc, a + row * 16 * ld, ld, b, ld, depth, col * 16);
  wmma::store_matrix_sync(out + row * 16 * kLdM + col * 16, acc[0], kLdM, wmma::mem_row_major);
}

// Where a chunk's per-row partial sums go in a [tiles, B, H, nC*64] tensor: the stride between
// 64-column tiles and the chunk's first row.
struct PartialRows {
  size_t stride, row0;
};
__device__ __forceinline__ PartialRows partial_rows(int B, int H, int num_chunks, int b, int h, int chunk) {
  return {static_cast<size_t>(B) * H * num_chunks * kChunk,
          (static_cast<size_t>(b) * H + h) * num_chunks * kChunk + static_cast<size_t>(chunk) * kChunk};
}

__device__ __forceinline__ float dot4(const float4& a, const float4& b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

// The in-chunk product of ssd_chunk_mix_kernel for one (chunk, batch and head), all columns.
// Warp w owns the output tiles (row block w % 4, column tiles w / 4 and w / 4 + 4). Shared
// memory (ld = max(K, cols) + 4): fa, fb, u' (then R) [64][ld]; aux [64][ld] when has_aux; the
// state part of R [64][ld] for partial_state; M [64][ldm] in the slot of fa or fb that is not v
// (ldm = ld) when ld >= 68, else its own [64][68]; the pair terms [64][68] for partial_pair.
// Without aux (the forward, dB) that is about 100 KB at P = N = 128: two blocks per SM.
// kMinBlocks = 2 (64 registers) where the shared memory lets two blocks share an SM.
template <int kMinBlocks>
__global__ void __launch_bounds__(kMixWarps * 32, kMinBlocks) ssd_chunk_mix_tc_kernel(const MixParams p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  constexpr int kThreadsTc = kMixWarps * 32;
  const int K = p.inner, cols = p.cols, ld = p.inner_stride;  // ld = max(K, cols) + 4
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* dl = reinterpret_cast<float*>(gamma + kChunk);      // [64]
  float* factor = dl + kChunk;                               // [64]
  float* fa = factor + kChunk;                               // [64][ld], 1 KB in: 32-byte aligned
  float* fb = fa + kChunk * ld;                              // [64][ld]
  float* us = fb + kChunk * ld;                              // [64][ld]: u', then R
  float* aux = us + kChunk * ld;                             // [64][ld] when has_aux
  float* state_part = aux + (p.has_aux ? kChunk * ld : 0);   // [64][ld] when partial_state
  float* own = state_part + (p.partial_state != nullptr ? kChunk * ld : 0);
  float* v = p.v_is_fb ? fb : fa;
  float* free_slot = p.v_is_fb ? fa : fb;  // read only to form G
  const bool mat_free = mat_in_free_slot(ld);
  float* mat = mat_free ? free_slot : own;  // [64][ldm]
  const int ldm = mat_free ? ld : kLdM;
  float* pair = own + (mat_free ? 0 : kChunk * kLdM);  // [64][kLdM] when partial_pair
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int t0 = chunk * kChunk, thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  // S's fragments are read straight from global memory in R's product below: ask L2 for them now.
  prefetch_l2_block(p.state + (static_cast<size_t>(bh) * p.num_chunks + chunk) * p.P * p.N,
                    static_cast<size_t>(p.P) * p.N);
  chunk_gamma(p.delta, p.A, b, h, t0, p.T, gamma, dl);
  __syncthreads();
  if (thread < kChunk)
    factor[thread] = p.to_end ? expf(static_cast<float>(gamma[kChunk - 1] - gamma[thread]))
                              : expf(static_cast<float>(gamma[thread]));
  load_chunk_rows(fa, ld, p.fa, b, t0, h, p.T, K, nullptr, kThreadsTc);
  load_chunk_rows(fb, ld, p.fb, b, t0, h, p.T, K, p.fb_delta ? dl : nullptr, kThreadsTc);
  load_chunk_rows(us, ld, p.u, b, t0, h, p.T, cols, p.u_delta ? dl : nullptr, kThreadsTc);
  if (p.has_aux) load_chunk_rows(aux, ld, p.aux, b, t0, h, p.T, cols, nullptr, kThreadsTc);
  __syncthreads();

  // G = fa fb^T (or fb fa^T when transposed) over the 16x16 tiles that meet M's nonzero triangle,
  // stored once every warp is done reading fa and fb (M may take the free slot's place).
  {
    const int rm = warp / 4, km = warp % 4;
    FragC acc[1];
    wmma::fill_fragment(acc[0], 0.0f);
    if (p.transpose ? km >= rm : km <= rm)
      tf32x3::warp_gemm<1, wmma::row_major, wmma::col_major>(acc, (p.transpose ? fb : fa) + rm * 16 * ld, ld,
                                                              p.transpose ? fa : fb, ld, K, km * 16);
    __syncthreads();
    wmma::store_matrix_sync(mat + rm * 16 * ldm + km * 16, acc[0], ldm, wmma::mem_row_major);
  }
  __syncthreads();
  // M = G o L (zero where j > t), and v's rows times the row factor (v is not read again as is).
  for (int index = thread; index < kChunk * kChunk; index += kThreadsTc) {
    const int r = index / kChunk, k = index % kChunk;
    const int t = p.transpose ? k : r, j = p.transpose ? r : k;
    float* m = mat + r * ldm + k;
    *m = j <= t ? *m * expf(static_cast<float>(gamma[t] - gamma[j])) : 0.0f;
  }
  for (int index = thread; index < kChunk * K; index += kThreadsTc) {
    const int r = index / K, i = index - r * K;
    v[r * ld + i] *= factor[r];
  }
  __syncthreads();

  // W[t][j] = u'_t . aux_j for the pair partial (tiles meeting j < t), masked after the sync below.
  if (p.partial_pair != nullptr) lower_tiles_abt(pair, us, aux, ld, cols, warp);

  // R = diag(f) v S^T + M u'.
  const int rb = warp % 4, ct = warp / 4, col_tiles = cols / 16;
  const bool active = ct < col_tiles, two = ct + 4 < col_tiles;
  const int col0 = ct * 16, col1 = col0 + 64;
  FragC acc[2];
  if (active) {
    wmma::fill_fragment(acc[0], 0.0f);
    wmma::fill_fragment(acc[1], 0.0f);
    const float* state = p.state + (static_cast<size_t>(bh) * p.num_chunks + chunk) * p.P * p.N;
    if (p.state_transposed)  // S [K][cols]: B = S, row-major
      warp_gemm_pair<wmma::row_major>(acc, two, v + rb * 16 * ld, ld, state, p.N, K, col0, col1);
    else  // S [cols][K]: B = S^T, col-major
      warp_gemm_pair<wmma::col_major>(acc, two, v + rb * 16 * ld, ld, state, p.N, K, col0, col1);
    if (p.partial_state != nullptr) {
      wmma::store_matrix_sync(state_part + rb * 16 * ld + col0, acc[0], ld, wmma::mem_row_major);
      if (two) wmma::store_matrix_sync(state_part + rb * 16 * ld + col1, acc[1], ld, wmma::mem_row_major);
    }
    // M's row block rb is zero outside k < 16 (rb + 1) (k >= 16 rb when transposed).
    const int k_begin = p.transpose ? rb * 16 : 0, k_end = p.transpose ? kChunk : (rb + 1) * 16;
    warp_gemm_pair<wmma::row_major>(acc, two, mat + rb * 16 * ldm + k_begin, ldm, us + k_begin * ld, ld,
                                    k_end - k_begin, col0, col1);
  }
  __syncthreads();  // every warp is done with u': R takes its place
  if (active) {
    wmma::store_matrix_sync(us + rb * 16 * ld + col0, acc[0], ld, wmma::mem_row_major);
    if (two) wmma::store_matrix_sync(us + rb * 16 * ld + col1, acc[1], ld, wmma::mem_row_major);
  }
  if (p.partial_pair != nullptr) {
    // m[t][j] = M[j][t] delta_j W[t][j] for j < t.
    for (int index = thread; index < kChunk * kChunk; index += kThreadsTc) {
      const int t = index / kChunk, j = index % kChunk;
      float* w = pair + t * kLdM + j;
      *w = j < t ? mat[j * ldm + t] * dl[j] * *w : 0.0f;
    }
  }
  __syncthreads();

  // Rows out: lane l holds columns 4l..4l+3 (16-byte accesses); the per-row partial sums are
  // summed per 64-column tile (lanes 0-15 and 16-31) in a fixed order.
  const int tiles = (cols + 63) / 64;
  const PartialRows partial = partial_rows(p.B, p.H, p.num_chunks, b, h, chunk);
  const int c = 4 * lane;
  const bool has_col = c < cols;
  for (int r = warp; r < kChunk; r += kMixWarps) {
    const int t = t0 + r;
    float4 value = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (has_col) value = *reinterpret_cast<const float4*>(us + r * ld + c);
    if (has_col && t < p.T) {
      const float s = p.out_delta ? dl[r] : 1.0f;
      const float4 o = make_float4(value.x * s, value.y * s, value.z * s, value.w * s);
      *reinterpret_cast<float4*>(p.out + ((static_cast<size_t>(b) * p.T + t) * p.H + h) * cols + c) = o;
    }
    if (p.partial_full != nullptr || p.partial_state != nullptr) {
      float full = 0.0f, from_state = 0.0f;
      if (has_col) {
        const float4 a = *reinterpret_cast<const float4*>(aux + r * ld + c);
        full = dot4(a, value);
        if (p.partial_state != nullptr) from_state = dot4(a, *reinterpret_cast<const float4*>(state_part + r * ld + c));
      }
#pragma unroll
      for (int offset = 8; offset > 0; offset >>= 1) {
        full += __shfl_xor_sync(0xffffffffu, full, offset);
        from_state += __shfl_xor_sync(0xffffffffu, from_state, offset);
      }
      const int tile = lane / 16;
      if (lane % 16 == 0 && tile < tiles) {
        const size_t at = tile * partial.stride + partial.row0 + r;
        if (p.partial_full != nullptr) p.partial_full[at] = full;
        if (p.partial_state != nullptr) p.partial_state[at] = from_state;
      }
    }
  }
  if (p.partial_pair != nullptr && thread < kChunk) {
    float sum = 0.0f;
    for (int j = 0; j < kChunk; ++j) sum += pair[thread * kLdM + j];
    for (int t = 0; t < kChunk; ++t) sum -= pair[t * kLdM + thread];
    p.partial_pair[partial.row0 + thread] = sum;
    for (int tile = 1; tile < tiles; ++tile) p.partial_pair[tile * partial.stride + partial.row0 + thread] = 0.0f;
  }
}

// ---- dC and dB in one pass per chunk (tensor cores) -------------------------------------------
// Both come from one chunk matrix M[t][j] = (dy_t . delta_j x_j) e^{Gamma_t - Gamma_j} (j <= t):
//   dC = M B + diag(e^Gamma) dy start,     dB = M^T C + diag(e^{Gamma_end - Gamma}) (delta x) dlocal
// plus the row partial sum_c C[t][c] (diag(e^Gamma) dy start)[t][c] per 64-column tile (the
// Gamma gradient's state term) and the chunk decay's gradient <dlocal, start>. Launched
// separately (ssd_chunk_mix_tc_kernel) each loads its operands and forms M; here one block per
// (chunk, batch and head) loads dy, delta x, B and C once, forms M once and runs the four
// products (each warp owns the same output tiles of dC and of dB). The two [P][N] states pass
// through shared memory 64 rows at a time (16-byte loads by the whole block), so the warps'
// fragments come from shared memory rather than L2. Shared memory (ld = max(P, N) + 4): dy (then
// dC), delta x (then dB), B, C, the state part of dC and the state rows, [64][ld] each, and
// M [64][68]: 218 KB at P = N = 128, one block per SM.
struct GradBcParams {
  View dy, x, Bm, Cm;
  DeltaView delta;
  const float* A;
  const float *starts, *d_local;
  float *dB, *dC, *partial_state, *d_decay;
  int B, T, H, num_chunks, P, N, ld;
};

size_t grad_bc_tc_shared_bytes(int ld) {
  return kChunk * sizeof(double) + 4 * kChunk * sizeof(float) +
         (static_cast<size_t>(kChunk) * ld * 6 + static_cast<size_t>(kChunk) * kLdM) * sizeof(float);
}

// acc += left's 16 rows . S (S a [P][N] chunk state in global memory), 3xTF32, S copied 64 rows at
// a time into `stage` ([64][ld]); every thread calls it. With `dot_with` (another [P][N] state),
// each thread also accumulates the products of the S elements it copies with dot_with's into dot.
__device__ __forceinline__ void state_product(FragC (&acc)[2], bool active, bool two, const float* left, int ld,
                                              const float* state, int P, int N, float* stage, int col0, int col1,
                                              const float* dot_with, float& dot) {
  const int n4 = N / 4;
  for (int k0 = 0; k0 < P; k0 += kChunk) {
    const int rows = min(kChunk, P - k0);
    __syncthreads();  // every warp is done with the previous rows
    for (int index = threadIdx.x; index < rows * n4; index += blockDim.x) {
      const int r = index / n4, c = (index - r * n4) * 4;
      const size_t at = static_cast<size_t>(k0 + r) * N + c;
      const float4 value = __ldg(reinterpret_cast<const float4*>(state + at));
      *reinterpret_cast<float4*>(stage + r * ld + c) = value;
      if (dot_with != nullptr) {
        const float4 other = __ldg(reinterpret_cast<const float4*>(dot_with + at));
        dot += dot4(value, other);
      }
    }
    __syncthreads();
    if (active) warp_gemm_pair<wmma::row_major>(acc, two, left + k0, ld, stage, ld, rows, col0, col1);
  }
}

__global__ void __launch_bounds__(kMixWarps * 32, 1) ssd_chunk_grad_bc_tc_kernel(const GradBcParams p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  constexpr int kThreadsTc = kMixWarps * 32;
  const int P = p.P, N = p.N, ld = p.ld;
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* dl = reinterpret_cast<float*>(gamma + kChunk);      // [64]
  float* from_start = dl + kChunk;                           // [64] e^{Gamma_t}
  float* to_end = from_start + kChunk;                       // [64] e^{Gamma_end - Gamma_t}
  float* warp_dots = to_end + kChunk;                        // [kMixWarps] (a [64] slot)
  float* dys = warp_dots + kChunk;                           // [64][ld], 1.5 KB in: 128-byte aligned
  float* xs = dys + kChunk * ld;                             // [64][ld] delta x
  float* bs = xs + kChunk * ld;                              // [64][ld]
  float* cs = bs + kChunk * ld;                              // [64][ld]
  float* state_part = cs + kChunk * ld;                      // [64][ld]
  float* stage = state_part + kChunk * ld;                   // [64][ld]
  float* mat = stage + kChunk * ld;                          // [64][kLdM]
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int t0 = chunk * kChunk, thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
  chunk_gamma(p.delta, p.A, b, h, t0, p.T, gamma, dl);
  __syncthreads();
  if (thread < kChunk) {
    from_start[thread] = expf(static_cast<float>(gamma[thread]));
    to_end[thread] = expf(static_cast<float>(gamma[kChunk - 1] - gamma[thread]));
  }
  load_chunk_rows(dys, ld, p.dy, b, t0, h, p.T, P, nullptr, kThreadsTc);
  load_chunk_rows(xs, ld, p.x, b, t0, h, p.T, P, dl, kThreadsTc);
  load_chunk_rows(bs, ld, p.Bm, b, t0, h, p.T, N, nullptr, kThreadsTc);
  load_chunk_rows(cs, ld, p.Cm, b, t0, h, p.T, N, nullptr, kThreadsTc);
  __syncthreads();

  // G = dy (delta x)^T over the tiles on or below the diagonal, then M = G o L.
  lower_tiles_abt(mat, dys, xs, ld, P, warp);
  __syncthreads();
  for (int index = thread; index < kChunk * kChunk; index += kThreadsTc) {
    const int t = index / kChunk, j = index % kChunk;
    float* m = mat + t * kLdM + j;
    *m = j <= t ? *m * expf(static_cast<float>(gamma[t] - gamma[j])) : 0.0f;
  }
  // The state terms' left operands: dy's rows times e^{Gamma_t}, delta x's times e^{Gamma_end - Gamma_t}.
  for (int index = thread; index < kChunk * P; index += kThreadsTc) {
    const int r = index / P, i = index - r * P;
    dys[r * ld + i] *= from_start[r];
    xs[r * ld + i] *= to_end[r];
  }
  __syncthreads();

  const int rb = warp % 4, ct = warp / 4, col_tiles = N / 16;
  const bool active = ct < col_tiles, two = ct + 4 < col_tiles;
  const int col0 = ct * 16, col1 = col0 + 64;
  FragC acc_c[2], acc_b[2];
  const size_t chunk_state = (static_cast<size_t>(bh) * p.num_chunks + chunk) * P * N;
#pragma unroll
  for (int s = 0; s < 2; ++s) wmma::fill_fragment(acc_c[s], 0.0f), wmma::fill_fragment(acc_b[s], 0.0f);
  float dot = 0.0f;
  state_product(acc_c, active, two, dys + rb * 16 * ld, ld, p.starts + chunk_state, P, N, stage, col0, col1,
                nullptr, dot);
  if (active) {
    wmma::store_matrix_sync(state_part + rb * 16 * ld + col0, acc_c[0], ld, wmma::mem_row_major);
    if (two) wmma::store_matrix_sync(state_part + rb * 16 * ld + col1, acc_c[1], ld, wmma::mem_row_major);
    // M's row block rb is zero past column 16 (rb + 1).
    warp_gemm_pair<wmma::row_major>(acc_c, two, mat + rb * 16 * kLdM, kLdM, bs, ld, (rb + 1) * 16, col0, col1);
  }
  state_product(acc_b, active, two, xs + rb * 16 * ld, ld, p.d_local + chunk_state, P, N, stage, col0, col1,
                p.starts + chunk_state, dot);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
  if (lane == 0) warp_dots[warp] = dot;
  if (active) {
    // (M^T)'s row block rb is M's column block rb: zero above row 16 rb.
    const int k_begin = rb * 16;
    warp_gemm_pair<wmma::row_major, wmma::col_major>(acc_b, two, mat + k_begin * kLdM + rb * 16, kLdM,
                                                     cs + k_begin * ld, ld, kChunk - k_begin, col0, col1);
  }
  __syncthreads();  // every warp is done with dy and delta x: dC and dB take their places
  if (active) {
    wmma::store_matrix_sync(dys + rb * 16 * ld + col0, acc_c[0], ld, wmma::mem_row_major);
    wmma::store_matrix_sync(xs + rb * 16 * ld + col0, acc_b[0], ld, wmma::mem_row_major);
    if (two) {
      wmma::store_matrix_sync(dys + rb * 16 * ld + col1, acc_c[1], ld, wmma::mem_row_major);
      wmma::store_matrix_sync(xs + rb * 16 * ld + col1, acc_b[1], ld, wmma::mem_row_major);
    }
  }
  __syncthreads();

  if (thread == 0) {  // the warps' sums in a fixed order: deterministic
    float sum = 0.0f;
    for (int w = 0; w < kMixWarps; ++w) sum += warp_dots[w];
    p.d_decay[static_cast<size_t>(bh) * p.num_chunks + chunk] = sum;
  }
  // Rows out as in ssd_chunk_mix_tc_kernel: lane l holds columns 4l..4l+3; the state partial is
  // summed per 64-column tile (lanes 0-15 and 16-31) in a fixed order.
  const int tiles = (N + 63) / 64;
  const PartialRows partial = partial_rows(p.B, p.H, p.num_chunks, b, h, chunk);
  const int c = 4 * lane;
  const bool has_col = c < N;
  for (int r = warp; r < kChunk; r += kMixWarps) {
    const int t = t0 + r;
    if (has_col && t < p.T) {
      const size_t at = ((static_cast<size_t>(b) * p.T + t) * p.H + h) * N + c;
      *reinterpret_cast<float4*>(p.dC + at) = *reinterpret_cast<const float4*>(dys + r * ld + c);
      *reinterpret_cast<float4*>(p.dB + at) = *reinterpret_cast<const float4*>(xs + r * ld + c);
    }
    float from_state = 0.0f;
    if (has_col)
      from_state = dot4(*reinterpret_cast<const float4*>(cs + r * ld + c),
                        *reinterpret_cast<const float4*>(state_part + r * ld + c));
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) from_state += __shfl_xor_sync(0xffffffffu, from_state, offset);
    const int tile = lane / 16;
    if (lane % 16 == 0 && tile < tiles) p.partial_state[tile * partial.stride + partial.row0 + r] = from_state;
  }
}

const float* optional_data(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.data_ptr<float>() : nullptr;
}
float* optional_output(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.data_ptr<float>() : nullptr;
}

// A [B,T,H,K] fp32 CUDA operand (any strides) of the given sizes.
void check_time_major(const at::Tensor& tensor, const char* op, const char* name, int64_t B, int64_t T,
                      int64_t H, int64_t K) {
  PRIME_CHECK(tensor.defined() && tensor.is_cuda() && tensor.scalar_type() == at::kFloat, op, ": ", name,
              " must be a defined fp32 CUDA tensor");
  PRIME_CHECK(tensor.dim() == 4 && tensor.size(0) == B && tensor.size(1) == T && tensor.size(2) == H &&
                  tensor.size(3) == K,
              op, ": ", name, " must be [", B, ", ", T, ", ", H, ", ", K, "], got ", tensor.sizes());
}

void check_delta_and_A(const at::Tensor& delta, const at::Tensor& A, const char* op) {
  PRIME_CHECK(delta.defined() && delta.is_cuda() && delta.scalar_type() == at::kFloat && delta.dim() == 3, op,
              ": delta must be a [B,T,H] fp32 CUDA tensor");
  check_operand(A, op, "A", at::kFloat, 1);
  PRIME_CHECK(A.size(0) == delta.size(2), op, ": A ", A.sizes(), " vs delta ", delta.sizes());
  PRIME_CHECK(delta.size(0) * delta.size(2) <= 65535, op, ": batch * heads must be <= 65535");
}

int64_t chunks_of(int64_t T) { return (T + kChunk - 1) / kChunk; }
int64_t tiles_of(int64_t dim) { return (dim + kTile - 1) / kTile; }

// The tensor-core kernels serve P and N multiples of 16 (every wmma tile full); PRIME_SSD_SIMT=1
// forces the SIMT kernels (a reference for timing and debugging).
bool use_tensor_cores(int64_t P, int64_t N) {
  static const bool simt = environment_switch<bool>(
      "PRIME_SSD_SIMT", {{"0", false, "the tensor-core kernels where they serve"}, {"1", true, "the SIMT kernels"}});
  return !simt && P % 16 == 0 && N % 16 == 0;
}

}  // namespace

void launch_ssd_chunk_states(const at::Tensor& u, const at::Tensor& v, const at::Tensor& delta,
                             const at::Tensor& A, SsdRowFactor factor, const at::Tensor& out,
                             const at::Tensor& decay) {
  const char* op = "ssd_chunk_states";
  check_delta_and_A(delta, A, op);
  const int64_t B = delta.size(0), T = delta.size(1), H = delta.size(2), P = u.size(3), N = v.size(3);
  const int64_t num_chunks = chunks_of(T);
  check_time_major(u, op, "u", B, T, H, P);
  check_time_major(v, op, "v", B, T, H, N);
  check_operand(out, op, "out", at::kFloat, 4);
  PRIME_CHECK(out.size(0) == B * H && out.size(1) == num_chunks && out.size(2) == P && out.size(3) == N, op,
              ": out ", out.sizes());
  if (decay.defined()) {
    check_operand(decay, op, "decay", at::kFloat, 2);
    PRIME_CHECK(decay.size(0) == B * H && decay.size(1) == num_chunks, op, ": decay ", decay.sizes());
  }
  if (B * H == 0 || T == 0 || P == 0 || N == 0) return;
  const at::cuda::CUDAGuard guard(u.device());
  if (use_tensor_cores(P, N)) {
    const size_t shared = states_tc_shared_bytes(static_cast<int>(P), static_cast<int>(N));
    PRIME_CUDA_CHECK(cudaFuncSetAttribute(ssd_chunk_states_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared)));
    const dim3 grid(static_cast<unsigned>(num_chunks), static_cast<unsigned>(B * H));
    ssd_chunk_states_tc_kernel<<<grid, kStatesWarps * 32, shared, at::cuda::getCurrentCUDAStream()>>>(
        make_view(u), make_view(v), make_delta_view(delta), A.data_ptr<float>(), static_cast<int>(T),
        static_cast<int>(H), static_cast<int>(num_chunks), static_cast<int>(P), static_cast<int>(N),
        factor == SsdRowFactor::ToEnd, out.data_ptr<float>(), optional_output(decay));
    PRIME_CUDA_CHECK_LAUNCH("ssd_chunk_states_tc_kernel");
    return;
  }
  const int tiles_n = static_cast<int>(tiles_of(N));
  const dim3 grid(static_cast<unsigned>(num_chunks), static_cast<unsigned>(B * H),
                  static_cast<unsigned>(tiles_of(P) * tiles_n));
  ssd_chunk_states_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      make_view(u), make_view(v), make_delta_view(delta), A.data_ptr<float>(), static_cast<int>(T),
      static_cast<int>(H), static_cast<int>(num_chunks), static_cast<int>(P), static_cast<int>(N), tiles_n,
      factor == SsdRowFactor::ToEnd, out.data_ptr<float>(), optional_output(decay));
  PRIME_CUDA_CHECK_LAUNCH("ssd_chunk_states_kernel");
}

void launch_ssd_state_scan(const at::Tensor& buffer, const at::Tensor& decay, const at::Tensor& initial,
                           const at::Tensor& restart, bool reverse, const at::Tensor& final_state) {
  const char* op = "ssd_state_scan";
  check_operand(buffer, op, "buffer", at::kFloat, 3);
  check_operand(decay, op, "decay", at::kFloat, 2);
  check_operand(final_state, op, "final_state", at::kFloat, 2);
  const int64_t M = buffer.size(0), num_chunks = buffer.size(1), elements = buffer.size(2);
  PRIME_CHECK(decay.size(0) == M && decay.size(1) == num_chunks, op, ": decay ", decay.sizes());
  PRIME_CHECK(final_state.size(0) == M && final_state.size(1) == elements, op, ": final_state ",
              final_state.sizes());
  if (initial.defined()) {
    check_operand(initial, op, "initial", at::kFloat, 2);
    PRIME_CHECK(initial.sizes() == final_state.sizes(), op, ": initial ", initial.sizes());
  }
  if (restart.defined()) {
    check_operand(restart, op, "restart", at::kBool, 1);
    PRIME_CHECK(restart.size(0) == num_chunks, op, ": restart ", restart.sizes(), " for ", num_chunks, " chunks");
  }
  PRIME_CHECK(M <= 65535 && elements < (int64_t{1} << 30), op, ": ", M, " rows of ", elements);
  if (M == 0 || elements == 0) return;
  if (num_chunks == 0) {  // nothing to walk: the final state is the initial one
    if (initial.defined()) final_state.copy_(initial);
    else final_state.zero_();
    return;
  }
  const at::cuda::CUDAGuard guard(buffer.device());
  const auto aligned = [](const float* data) { return reinterpret_cast<std::uintptr_t>(data) % 16 == 0; };
  const bool vec4 = elements % 4 == 0 && aligned(buffer.data_ptr<float>()) && aligned(optional_data(initial)) &&
                    aligned(final_state.data_ptr<float>());
  const int64_t width = vec4 ? 4 : 1, threads_needed = elements / width;
  const int64_t element_blocks = (threads_needed + kThreads - 1) / kThreads;
  const RestartSegments segments = restart_segments(restart, num_chunks, element_blocks * M);
  const dim3 grid(static_cast<unsigned>(element_blocks), static_cast<unsigned>(M),
                  static_cast<unsigned>(segments.slots));
  const auto kernel = vec4 ? ssd_state_scan_kernel<4> : ssd_state_scan_kernel<1>;
  kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      buffer.data_ptr<float>(), decay.data_ptr<float>(), optional_data(initial),
      restart.defined() ? restart.data_ptr<bool>() : nullptr, segments.data(), final_state.data_ptr<float>(),
      static_cast<int>(num_chunks), static_cast<int>(elements), reverse);
  PRIME_CUDA_CHECK_LAUNCH("ssd_state_scan_kernel");
}

bool ssd_chunk_grad_bc_fused_apply(int64_t P, int64_t N) {
  if (!use_tensor_cores(P, N) || P > kSsdMaxDim || N > kSsdMaxDim) return false;
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  return grad_bc_tc_shared_bytes(padded_ld(static_cast<int>(std::max(P, N)))) <= properties->sharedMemPerBlockOptin;
}

void launch_ssd_chunk_grad_bc(const SsdGradBcOperands& o, const at::Tensor& delta, const at::Tensor& A) {
  const char* op = "ssd_chunk_grad_bc";
  check_delta_and_A(delta, A, op);
  const int64_t B = delta.size(0), T = delta.size(1), H = delta.size(2);
  const int64_t num_chunks = chunks_of(T);
  check_operand(o.starts, op, "starts", at::kFloat, 4);
  check_operand(o.d_local, op, "d_local", at::kFloat, 4);
  const int64_t P = o.starts.size(2), N = o.starts.size(3);
  PRIME_CHECK(o.starts.size(0) == B * H && o.starts.size(1) == num_chunks && o.d_local.sizes() == o.starts.sizes(),
              op, ": starts ", o.starts.sizes(), ", d_local ", o.d_local.sizes());
  PRIME_CHECK(ssd_chunk_grad_bc_fused_apply(P, N), op, ": P ", P, " and N ", N,
              " must be multiples of 16 up to ", kSsdMaxDim, " with the block's shared memory on the device");
  check_time_major(o.dy, op, "dy", B, T, H, P);
  check_time_major(o.x, op, "x", B, T, H, P);
  check_time_major(o.Bm, op, "Bm", B, T, H, N);
  check_time_major(o.Cm, op, "Cm", B, T, H, N);
  for (const at::Tensor* out : {&o.dB, &o.dC}) {
    check_operand(*out, op, "dB/dC", at::kFloat, 4);
    PRIME_CHECK(out->is_contiguous() && out->size(0) == B && out->size(1) == T && out->size(2) == H &&
                    out->size(3) == N,
                op, ": dB/dC ", out->sizes());
  }
  check_operand(o.partial_state, op, "partial_state", at::kFloat, 4);
  PRIME_CHECK(o.partial_state.size(0) == tiles_of(N) && o.partial_state.size(1) == B && o.partial_state.size(2) == H &&
                  o.partial_state.size(3) == num_chunks * kChunk,
              op, ": partial_state ", o.partial_state.sizes());
  check_operand(o.d_decay, op, "d_decay", at::kFloat, 2);
  PRIME_CHECK(o.d_decay.is_contiguous() && o.d_decay.size(0) == B * H && o.d_decay.size(1) == num_chunks, op,
              ": d_decay ", o.d_decay.sizes());
  if (B * H == 0 || T == 0) return;
  const at::cuda::CUDAGuard guard(delta.device());
  GradBcParams params{};
  params.dy = make_view(o.dy), params.x = make_view(o.x), params.Bm = make_view(o.Bm), params.Cm = make_view(o.Cm);
  params.delta = make_delta_view(delta);
  params.A = A.data_ptr<float>();
  params.starts = o.starts.data_ptr<float>(), params.d_local = o.d_local.data_ptr<float>();
  params.dB = o.dB.data_ptr<float>(), params.dC = o.dC.data_ptr<float>();
  params.partial_state = o.partial_state.data_ptr<float>(), params.d_decay = o.d_decay.data_ptr<float>();
  params.B = static_cast<int>(B), params.T = static_cast<int>(T), params.H = static_cast<int>(H);
  params.num_chunks = static_cast<int>(num_chunks), params.P = static_cast<int>(P), params.N = static_cast<int>(N);
  params.ld = padded_ld(static_cast<int>(std::max(P, N)));
  const size_t shared = grad_bc_tc_shared_bytes(params.ld);
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(ssd_chunk_grad_bc_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared)));
  const dim3 grid(static_cast<unsigned>(num_chunks), static_cast<unsigned>(B * H));
  ssd_chunk_grad_bc_tc_kernel<<<grid, kMixWarps * 32, shared, at::cuda::getCurrentCUDAStream()>>>(params);
  PRIME_CUDA_CHECK_LAUNCH("ssd_chunk_grad_bc_tc_kernel");
}

void launch_ssd_chunk_mix(const SsdMixOperands& o, const at::Tensor& delta, const at::Tensor& A) {
  const char* op = "ssd_chunk_mix";
  check_delta_and_A(delta, A, op);
  const int64_t B = delta.size(0), T = delta.size(1), H = delta.size(2);
  const int64_t num_chunks = chunks_of(T);
  check_operand(o.state, op, "state", at::kFloat, 4);
  const int64_t P = o.state.size(2), N = o.state.size(3);
  PRIME_CHECK(o.state.size(0) == B * H && o.state.size(1) == num_chunks, op, ": state ", o.state.sizes());
  PRIME_CHECK(P <= kSsdMaxDim && N <= kSsdMaxDim, op, ": P ", P, " and N ", N, " must be <= ", kSsdMaxDim);
  // Inner dim of the pair (fa, fb) and of the state product; the output's columns.
  const int64_t inner = o.state_transposed ? P : N, cols = o.state_transposed ? N : P;
  check_time_major(o.fa, op, "fa", B, T, H, inner);
  check_time_major(o.fb, op, "fb", B, T, H, inner);
  check_time_major(o.u, op, "u", B, T, H, cols);
  if (o.aux.defined()) check_time_major(o.aux, op, "aux", B, T, H, cols);
  check_operand(o.out, op, "out", at::kFloat, 4);
  PRIME_CHECK(o.out.size(0) == B && o.out.size(1) == T && o.out.size(2) == H && o.out.size(3) == cols, op,
              ": out ", o.out.sizes());
  const int64_t tiles = tiles_of(cols);
  for (const at::Tensor* partial : {&o.partial_full, &o.partial_state, &o.partial_pair}) {
    if (!partial->defined()) continue;
    check_operand(*partial, op, "partial", at::kFloat, 4);
    PRIME_CHECK(partial->size(0) == tiles && partial->size(1) == B && partial->size(2) == H &&
                    partial->size(3) == num_chunks * kChunk,
                op, ": partial ", partial->sizes());
  }
  PRIME_CHECK(o.aux.defined() || (!o.partial_full.defined() && !o.partial_state.defined()), op,
              ": row partials need aux");
  PRIME_CHECK(!o.partial_pair.defined() || (o.transpose && o.aux.defined()), op,
              ": the pair partial needs transpose and aux");
  if (B * H == 0 || T == 0 || P == 0 || N == 0) return;
  const at::cuda::CUDAGuard guard(delta.device());
  MixParams params{};
  params.fa = make_view(o.fa), params.fb = make_view(o.fb), params.u = make_view(o.u), params.aux = make_view(o.aux);
  params.delta = make_delta_view(delta);
  params.A = A.data_ptr<float>();
  params.state = o.state.data_ptr<float>();
  params.out = o.out.data_ptr<float>();
  params.partial_full = optional_output(o.partial_full);
  params.partial_state = optional_output(o.partial_state);
  params.partial_pair = optional_output(o.partial_pair);
  params.B = static_cast<int>(B), params.T = static_cast<int>(T), params.H = static_cast<int>(H);
  params.num_chunks = static_cast<int>(num_chunks);
  params.inner = static_cast<int>(inner);
  params.inner_stride = static_cast<int>(inner | 1);  // odd: rows land in different banks
  params.cols = static_cast<int>(cols), params.P = static_cast<int>(P), params.N = static_cast<int>(N);
  params.fb_delta = o.fb_delta, params.transpose = o.transpose, params.u_delta = o.u_delta;
  params.v_is_fb = o.v_is_fb, params.state_transposed = o.state_transposed, params.out_delta = o.out_delta;
  params.to_end = o.factor == SsdRowFactor::ToEnd, params.has_aux = o.aux.defined();
  const int tc_stride = padded_ld(static_cast<int>(std::max(inner, cols)));
  const size_t tc_shared = mix_tc_shared_bytes(tc_stride, params.has_aux, params.partial_state != nullptr,
                                               params.partial_pair != nullptr);
  // The tensor-core kernel where its block fits the device's shared memory (the launches with aux
  // need up to 187 KB: not on an A100's 163 KB), else the SIMT kernel (133 KB at most).
  if (use_tensor_cores(P, N) && tc_shared <= at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin) {
    params.inner_stride = tc_stride;
    const size_t shared = tc_shared;
    // Two blocks per SM when both fit in its 228 KB (1 KB reserved per block).
    const bool two_blocks = 2 * (shared + 1024) <= 228 * 1024;
    const auto kernel = two_blocks ? ssd_chunk_mix_tc_kernel<2> : ssd_chunk_mix_tc_kernel<1>;
    PRIME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared)));
    const dim3 grid(static_cast<unsigned>(num_chunks), static_cast<unsigned>(B * H));
    kernel<<<grid, kMixWarps * 32, shared, at::cuda::getCurrentCUDAStream()>>>(params);
    PRIME_CUDA_CHECK_LAUNCH("ssd_chunk_mix_tc_kernel");
    return;
  }
  const size_t shared = mix_shared_bytes(params.inner_stride);
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(ssd_chunk_mix_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared)));
  const dim3 grid(static_cast<unsigned>(num_chunks), static_cast<unsigned>(B * H), static_cast<unsigned>(tiles));
  ssd_chunk_mix_kernel<<<grid, kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(params);
  PRIME_CUDA_CHECK_LAUNCH("ssd_chunk_mix_kernel");
}

}  // namespace prime::kernels::detail
