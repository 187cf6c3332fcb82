// The walk over chunks of Mamba-2's bf16 SSD forward and backward (ssd_forward_bf16_kernels.cu,
// ssd_backward_bf16_kernels.cu), P = N = D. One block per (batch and head, CW rows of the state):
// the state tile S [CW][D] (rows along P, columns along N) lives in the warps' fp32 accumulator
// fragments across all chunks.
//  - forwards, n = 0..last: out[n] = bf16(S); S = e^{Gamma_end} S + (diag(f) X)^T B with
//    f_t = delta_t e^{Gamma_end - Gamma_t} (u = x, v = B): out[n] is the state entering chunk n.
//  - backwards, n = last..0: out[n] = bf16(G); G = e^{Gamma_end} G + (diag(e^Gamma) dY)^T C
//    (u = dy, v = C): out[n] is the gradient of the state leaving chunk n, G at the end the
//    initial state's.
// Each chunk's row factors (f_t forwards, e^{Gamma_t} backwards) and decay e^{Gamma_end} come from
// a small kernel run first (Gamma in float64 sums), so nothing serial sits in the walk's steps.
// The rows and factors of the chunk two steps ahead stream into shared memory (cp.async, three
// buffers), the chunk's decay is read a step ahead, and the next chunk's u rows are scaled while
// this chunk computes. Products on bf16 tensor cores (mma.sync, fp32 accumulation; bf16_tiles.cuh).
// Chunks are 64 steps; rows past T are zeros.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>
#include <utility>

#include "kernels/common/bf16_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/restart_segments.cuh"
#include "kernels/ssd_chunk/ssd_chunk_common.cuh"
#include "kernels/ssd_chunk/ssd_chunk_launch.h"

namespace prime::kernels::detail::ssd_bf16 {
namespace {  // each CUDA source instantiates its own direction

using namespace bf16_tiles;
using ssd_common::DeltaView;

constexpr int kChunk = static_cast<int>(kSsdChunk);
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

struct WalkParams {
  const Bf16 *u, *v;          // [B,T,H,D]: x and B forwards, dy and C backwards
  const float* factors;       // [M,N,64]: f_t forwards, e^{Gamma_t} backwards
  const float* decays;        // [M,N]: e^{Gamma_end}
  int T, H, num_chunks;
  Bf16* out;                  // [M,N,D,D]
  const float* initial;       // [M,D,D] or null (zeros): the initial state / the final state's gradient
  float* final_state;         // [M,D,D]: the final state / the initial state's gradient
  const bool* starts;         // [N] or null
  const int* segment_begins;  // restart_segments' list for starts, or null (one segment)
};

// Shared memory: three buffers of { the row factors [64], u [64][ldu], v [64][ldv] }.
constexpr int kFactorBytes = kChunk * sizeof(float);

template <int D, int CW>
constexpr size_t walk_shared_bytes() {
  return 3 * (kFactorBytes + kChunk * (ld_of(CW) + ld_of(D)) * sizeof(Bf16));
}

// factors[m][n][t] and decays[m][n] for chunk n of batch and head m: one warp per chunk, eight per
// block (Gamma from ssd_common::scan_gamma).
constexpr int kFactorChunksPerBlock = 8;

template <bool Reverse>
__global__ void __launch_bounds__(32 * kFactorChunksPerBlock) ssd_walk_factors_kernel(
    DeltaView delta, const float* A, int T, int H, int num_chunks, float* factors, float* decays) {
  __shared__ double gamma_all[kFactorChunksPerBlock][kChunk];
  __shared__ float dl_all[kFactorChunksPerBlock][kChunk];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = blockIdx.x * kFactorChunksPerBlock + warp, m = blockIdx.y, b = m / H, h = m % H;
  if (n >= num_chunks) return;  // whole warps
  double* gamma = gamma_all[warp];
  float* dl = dl_all[warp];
  ssd_common::scan_gamma(ssd_common::chunk_deltas(delta, b, h, n * kChunk, T), A[h], gamma, dl);
  __syncwarp();
  float* out = factors + (static_cast<size_t>(m) * num_chunks + n) * kChunk;
  for (int t = lane; t < kChunk; t += 32)
    out[t] = Reverse ? expf(static_cast<float>(gamma[t]))
                     : (delta.scales_inputs ? dl[t] : 1.0f) * expf(static_cast<float>(gamma[kChunk - 1] - gamma[t]));
  if (lane == 0) decays[static_cast<size_t>(m) * num_chunks + n] = expf(static_cast<float>(gamma[kChunk - 1]));
}

// Warp w's state tiles are f = w + 8 i: rows 16 (f / CB) of the block's CW, columns 16 (f % CB),
// one column block per warp (kWarps % CB == 0), so v's fragment is loaded once per k-step.
// Step i walks chunk n (n = begin + i forwards, end - 1 - i backwards): the chunk two steps on is
// fetched (cp.async, three buffers) and the next chunk's decay read; out[n] = bf16(S); one
// barrier; the next chunk's u rows are scaled while S = decay_n S + (diag(factor) U_n)^T V_n; one
// barrier.
// Restarts: forwards the state entering a flagged chunk is zero; backwards nothing flows back
// past a flagged chunk (G = 0 after its step).
template <int D, int CW, bool Reverse>
__global__ void __launch_bounds__(kThreads, 2) ssd_walk_bf16_kernel(const WalkParams p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  constexpr int ldu = ld_of(CW), ldv = ld_of(D), CB = D / 16;
  constexpr int kTiles = (CW / 16) * CB, kPerWarp = (kTiles + kWarps - 1) / kWarps;
  static_assert(kWarps % CB == 0, "one column block per warp");
  constexpr int kBufferBytes = kFactorBytes + kChunk * (ldu + ldv) * static_cast<int>(sizeof(Bf16));
  static_assert(kBufferBytes % 16 == 0, "16-byte aligned buffers");
  const auto factors_of = [&](int n) { return reinterpret_cast<float*>(shared_bytes + (n % 3) * kBufferBytes); };
  const auto us = [&](int n) { return reinterpret_cast<Bf16*>(shared_bytes + (n % 3) * kBufferBytes + kFactorBytes); };
  const auto vs = [&](int n) { return us(n) + kChunk * ldu; };
  const int warp = threadIdx.x / 32;
  const int row0 = blockIdx.x * CW, m = blockIdx.y, b = m / p.H, h = m % p.H, N = p.num_chunks;
  const size_t row_stride = static_cast<size_t>(p.H) * D, state_size = static_cast<size_t>(D) * D;
  const size_t first_row = static_cast<size_t>(b) * p.T * row_stride + static_cast<size_t>(h) * D;
  const auto fetch = [&](int n) {  // chunk n's factors, rows of u (the block's columns) and of v
    const int t0 = n * kChunk;
    if (threadIdx.x < kFactorBytes / 16)
      cp_async16(factors_of(n) + 4 * threadIdx.x,
                 p.factors + (static_cast<size_t>(m) * N + n) * kChunk + 4 * threadIdx.x);
    copy_async<kChunk, CW, kThreads>(us(n), p.u + first_row + t0 * row_stride + row0, row_stride, p.T - t0);
    copy_async<kChunk, D, kThreads>(vs(n), p.v + first_row + t0 * row_stride, row_stride, p.T - t0);
  };
  const auto decay_of = [&](int n) { return p.decays[static_cast<size_t>(m) * N + n]; };
  const auto scale = [&](int n) {
    const float* f = factors_of(n);
    scale_rows<kChunk, CW, kThreads>(us(n), [&](int t) { return f[t]; });
  };
  const auto flagged = [&](int n) { return p.starts != nullptr && p.starts[n]; };  // uniform over the block
  const int cb = warp % CB;
  for_each_restart_segment(p.segment_begins, N, blockIdx.z, gridDim.z, [&](int begin, int end, bool first,
                                                                         bool last) {
    const int count = end - begin;
    const auto chunk_at = [&](int i) { return Reverse ? end - 1 - i : begin + i; };
    fetch(chunk_at(0));
    cp_async_commit();
    if (count > 1) fetch(chunk_at(1));
    cp_async_commit();
    float decay_next = decay_of(chunk_at(0));
    const bool from_initial = (Reverse ? last : first) && p.initial != nullptr;
    Acc s[kPerWarp];
#pragma unroll
    for (int i = 0; i < kPerWarp; ++i) {
      const int f = warp + kWarps * i;
      if (from_initial && f < kTiles)
        load_acc(s[i], p.initial + m * state_size + (row0 + 16 * (f / CB)) * D + 16 * cb, D);
      else
        fill(s[i], 0.0f);
    }
    cp_async_wait<1>();  // the first chunk's rows
    __syncthreads();
    scale(chunk_at(0));
    for (int i = 0; i < count; ++i) {
      const int n = chunk_at(i);
      if (i + 2 < count) fetch(chunk_at(i + 2));
      cp_async_commit();  // possibly empty: one group per step
      const float decay = decay_next;
      if (i + 1 < count) decay_next = decay_of(chunk_at(i + 1));
      if (!Reverse && flagged(n)) {  // a document's first chunk
#pragma unroll
        for (int k = 0; k < kPerWarp; ++k) fill(s[k], 0.0f);
      }
      Bf16* out_n = p.out + (static_cast<size_t>(m) * N + n) * state_size;
#pragma unroll
      for (int k = 0; k < kPerWarp; ++k) {
        const int f = warp + kWarps * k;
        if (f >= kTiles) continue;
        const int r0 = row0 + 16 * (f / CB);
        for_each_pair(s[k], [&](int row, int col, float x0, float x1) {
          *reinterpret_cast<__nv_bfloat162*>(out_n + (r0 + row) * D + 16 * cb + col) = __floats2bfloat162_rn(x0, x1);
        });
      }
      cp_async_wait<1>();  // the next chunk's factors and rows (the one after may still be in flight)
      __syncthreads();     // and this chunk's scaled rows
      if (i + 1 < count) scale(chunk_at(i + 1));
#pragma unroll
      for (int k = 0; k < kPerWarp; ++k)
#pragma unroll
        for (int e = 0; e < s[k].num_elements; ++e) s[k].x[e] *= decay;
      const Bf16 *u_n = us(n), *v_n = vs(n);
#pragma unroll
      for (int k0 = 0; k0 < kChunk; k0 += 16) {
        FragB vm;
        load_b(vm, v_n + k0 * ldv + 16 * cb, ldv);
#pragma unroll
        for (int k = 0; k < kPerWarp; ++k) {
          const int f = warp + kWarps * k;
          if (f >= kTiles) continue;
          FragA at;  // (diag(factor) U)^T: A's row r is u's column r
          load_a_t(at, u_n + k0 * ldu + 16 * (f / CB), ldu);
          mma(s[k], at, vm);
        }
      }
      if (Reverse && flagged(n)) {  // nothing flows back past a document's first chunk
#pragma unroll
        for (int k = 0; k < kPerWarp; ++k) fill(s[k], 0.0f);
      }
      __syncthreads();  // this chunk's buffer and the next chunk's scaling done
    }
    if (Reverse ? first : last) {
#pragma unroll
      for (int k = 0; k < kPerWarp; ++k) {
        const int f = warp + kWarps * k;
        if (f < kTiles)
          store_acc(p.final_state + m * state_size + (row0 + 16 * (f / CB)) * D + 16 * cb, s[k], D);
      }
    }
  });
}

// The operand checks both launchers share: x, Bm, Cm bf16 [B,T,H,D] (16-byte aligned), D in
// {32, 64, 128}; delta fp32 [B,T,H]; A fp32 [H]; restart [nC] bool or undefined; one device.
inline void check_operands(const char* op, const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                           const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& restart) {
  check_operand(x, op, "x", at::kBFloat16, 4);
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  PRIME_CHECK(D == 32 || D == 64 || D == 128, op, ": head dim ", D, " is not 32, 64 or 128");
  PRIME_CHECK(B * H <= 65535 && (T + kChunk - 1) / kChunk <= 65535, op,
              ": batch * heads and the chunk count must be <= 65535");
  check_operand_sizes(Bm, op, "Bm", at::kBFloat16, x.sizes());
  check_operand_sizes(Cm, op, "Cm", at::kBFloat16, x.sizes());
  PRIME_CHECK(delta.defined() && delta.is_cuda() && delta.scalar_type() == at::kFloat &&
                  delta.sizes() == at::IntArrayRef({B, T, H}),
              op, ": delta must be a [", B, ", ", T, ", ", H, "] fp32 CUDA tensor");
  check_operand_sizes(A, op, "A", at::kFloat, {H});
  if (restart.defined()) check_operand_sizes(restart, op, "restart", at::kBool, {(T + kChunk - 1) / kChunk});
  for (const auto& [tensor, name] : {std::pair{&x, "x"}, std::pair{&Bm, "Bm"}, std::pair{&Cm, "Cm"}})
    check_aligned(*tensor, op, name, 16);
  for (const at::Tensor* operand : {&delta, &A, &Bm, &Cm, &restart})
    PRIME_CHECK(!operand->defined() || operand->device() == x.device(), op, ": operands on different devices");
}

// Runs the walk (the caller checked the operands): u, v bf16 [B,T,H,D]; out bf16 [B*H, nC, D, D];
// initial fp32 [B*H, D, D] or undefined; final_state fp32 [B*H, D, D]; restart [nC] or undefined.
// delta_scales_inputs false (forwards only): f_t = e^{Gamma_end - Gamma_t}, delta the decay alone.
template <bool Reverse>
void run_walk(const char* op, const at::Tensor& u, const at::Tensor& v, const at::Tensor& delta, const at::Tensor& A,
              const at::Tensor& restart, const at::Tensor& out, const at::Tensor& initial,
              const at::Tensor& final_state, bool delta_scales_inputs = true) {
  PRIME_CHECK(delta_scales_inputs || !Reverse, op, ": the backward walk takes delta as an input scale");
  const int64_t B = u.size(0), T = u.size(1), H = u.size(2), D = u.size(3), M = B * H;
  const int64_t N = (T + kChunk - 1) / kChunk;
  check_operand_sizes(out, op, "states", at::kBFloat16, {M, N, D, D});
  check_operand_sizes(final_state, op, "final_state", at::kFloat, {M, D, D});
  if (initial.defined()) check_operand_sizes(initial, op, "initial", at::kFloat, {M, D, D});
  check_aligned(out, op, "states", 16);
  check_aligned(final_state, op, "final_state", 32);
  if (initial.defined()) check_aligned(initial, op, "initial", 32);
  for (const at::Tensor* operand : {&out, &initial, &final_state})
    PRIME_CHECK(!operand->defined() || operand->device() == u.device(), op, ": operands on different devices");
  if (M == 0 || N == 0) return;
  const at::Tensor factors = at::empty({M, N, kChunk}, delta.options());
  const at::Tensor decays = at::empty({M, N}, delta.options());
  const dim3 factor_grid(static_cast<unsigned>((N + kFactorChunksPerBlock - 1) / kFactorChunksPerBlock),
                         static_cast<unsigned>(M));
  ssd_walk_factors_kernel<Reverse><<<factor_grid, 32 * kFactorChunksPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
      ssd_common::make_delta_view(delta, delta_scales_inputs), A.data_ptr<float>(), static_cast<int>(T),
      static_cast<int>(H),
      static_cast<int>(N), factors.data_ptr<float>(), decays.data_ptr<float>());
  PRIME_CUDA_CHECK_LAUNCH("ssd_walk_factors_kernel");
  WalkParams p{};
  p.u = reinterpret_cast<const Bf16*>(u.data_ptr());
  p.v = reinterpret_cast<const Bf16*>(v.data_ptr());
  p.factors = factors.data_ptr<float>();
  p.decays = decays.data_ptr<float>();
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.num_chunks = static_cast<int>(N);
  p.out = reinterpret_cast<Bf16*>(out.data_ptr());
  p.initial = initial.defined() ? initial.data_ptr<float>() : nullptr;
  p.final_state = final_state.data_ptr<float>();
  p.starts = restart.defined() ? restart.data_ptr<bool>() : nullptr;
  const RestartSegments segments = restart_segments(restart, N, M * (D == 32 ? 1 : D / 64));  // the walk's grid
  p.segment_begins = segments.data();
  const auto launch = [&](auto kernel, int width) {
    const dim3 grid(static_cast<unsigned>(D / width), static_cast<unsigned>(M), static_cast<unsigned>(segments.slots));
    launch_with_shared(kernel, grid, D == 32   ? walk_shared_bytes<32, 32>()
                                     : D == 64 ? walk_shared_bytes<64, 64>()
                                               : walk_shared_bytes<128, 64>(),
                       kThreads, p, Reverse ? "ssd_walk_bf16_kernel (backward)" : "ssd_walk_bf16_kernel");
  };
  if (D == 32)
    launch(ssd_walk_bf16_kernel<32, 32, Reverse>, 32);
  else if (D == 64)
    launch(ssd_walk_bf16_kernel<64, 64, Reverse>, 64);
  else
    launch(ssd_walk_bf16_kernel<128, 64, Reverse>, 64);
}

}  // namespace
}  // namespace prime::kernels::detail::ssd_bf16
