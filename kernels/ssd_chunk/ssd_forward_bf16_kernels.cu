// CUDA kernels of Mamba-2's chunked SSD forward on bf16 operands (ssd_chunk_launch.h,
// launch_ssd_forward_bf16; the math in ssd_chunk.h), P = N = D. Two launches:
//  - walk, one block per (batch and head, CW rows of the state): the state tile S [CW][D] (rows
//    along P, columns along N) lives in the warps' fp32 accumulator fragments across all chunks.
//    Per chunk n: states[n] = bf16(S); S = e^{Gamma_end} S + (diag(f) X)^T B with
//    f_t = delta_t e^{Gamma_end - Gamma_t}. The rows of the chunk two ahead stream into shared
//    memory (cp.async, three buffers) and the next chunk's rows are scaled while this chunk
//    computes; warp 0 prepares the next chunk's f_t and decay from deltas read a step earlier.
//  - output, one block per (chunk, batch and head): Y = diag(e^Gamma) C S_n^T + M X with
//    M_tj = (C_t . B_j) delta_j e^{Gamma_t - Gamma_j} for j <= t.
// Products on bf16 tensor cores (wmma 16x16x16, fp32 accumulation). Gamma (float64 sums), the
// decays and the carried state stay fp32 or wider; the scaled x rows, M and the states entering
// each chunk are rounded to bf16. Chunks are 64 steps; rows past T are zeros.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <type_traits>

#include "kernels/common/bf16_wmma.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/restart_segments.cuh"
#include "kernels/ssd_chunk/ssd_chunk_common.cuh"
#include "kernels/ssd_chunk/ssd_chunk_launch.h"

namespace prime::kernels::detail {

namespace {

using namespace bf16_wmma;
using ssd_common::DeltaView;

constexpr int kChunk = static_cast<int>(kSsdChunk);
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

struct Bf16SsdParams {
  const Bf16 *x, *b, *c;       // [B,T,H,D]
  DeltaView delta;             // [B,T,H]
  const float* A;              // [H]
  int T, H, num_chunks;
  Bf16* states;                // [M,N,D,D]: the state entering each chunk
  const float* initial;        // [M,D,D] or null (zeros)
  float* final_state;          // [M,D,D]
  const bool* starts;          // [N] or null
  const int* segment_begins;   // restart_segments' list for starts, or null (one segment)
  void* y;                     // [B,T,H,D], fp32 or bf16
};

// ---- the walk over chunks ----------------------------------------------------------------------
// Shared memory: Gamma [64] double, the deltas [64] (warp 0's scratch), f_t of two chunks [2][64],
// their decays [2], then three buffers of { x [64][ldx], B [64][ldb] } and the warps' scratch.
constexpr int kWalkHeaderBytes = 1536;

template <int D, int CW>
constexpr size_t walk_shared_bytes() {
  return kWalkHeaderBytes + 3 * kChunk * (ld_of(CW) + ld_of(D)) * sizeof(Bf16) + kWarps * kScratchBytes;
}

// Warp 0: Gamma of the chunk whose deltas it holds (chunk_deltas), then its f_t and decay into
// slot `slot`.
__device__ __forceinline__ void prepare_chunk(float2 d, float a, double* gamma, float* dl, float* factor,
                                              float* decay) {
  const int lane = threadIdx.x % 32;
  ssd_common::scan_gamma(d, a, gamma, dl);
  __syncwarp();
  for (int t = lane; t < kChunk; t += 32) factor[t] = dl[t] * expf(static_cast<float>(gamma[kChunk - 1] - gamma[t]));
  if (lane == 0) *decay = expf(static_cast<float>(gamma[kChunk - 1]));
}

// Warp w's state tiles are f = w + 8 i: rows 16 (f / CB) of the block's CW, columns 16 (f % CB),
// one column block per warp (kWarps % CB == 0), so B's fragment is loaded once per k-step.
// Pipeline, step n: chunk n + 2's rows are fetched (cp.async, three buffers), warp 0 prepares
// chunk n + 1's f_t and decay (its deltas read a step earlier) and reads chunk n + 2's deltas,
// states[n] = bf16(S); one barrier; chunk n + 1's x rows are scaled by f_t while
// S = decay_n S + (diag(f) X_n)^T B_n (X_n scaled a step earlier); one barrier.
template <int D, int CW>
__global__ void __launch_bounds__(kThreads, 2) ssd_forward_walk_bf16_kernel(const Bf16SsdParams p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  constexpr int ldx = ld_of(CW), ldb = ld_of(D), CB = D / 16;
  constexpr int kTiles = (CW / 16) * CB, kPerWarp = (kTiles + kWarps - 1) / kWarps;
  static_assert(kWarps % CB == 0, "one column block per warp");
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* dl = reinterpret_cast<float*>(gamma + kChunk);      // [64]
  float* factors = dl + kChunk;                              // [2][64]
  float* decays = factors + 2 * kChunk;                      // [2]
  static_assert(kChunk * (sizeof(double) + 3 * sizeof(float)) + 2 * sizeof(float) <= kWalkHeaderBytes, "header");
  Bf16* buffers = reinterpret_cast<Bf16*>(shared_bytes + kWalkHeaderBytes);
  constexpr int kBuffer = kChunk * (ldx + ldb);
  const auto xs = [&](int n) { return buffers + (n % 3) * kBuffer; };
  const auto bs = [&](int n) { return buffers + (n % 3) * kBuffer + kChunk * ldx; };
  const int warp = threadIdx.x / 32;
  float* scratch = reinterpret_cast<float*>(buffers + 3 * kBuffer) + warp * (kScratchBytes / 4);
  const int row0 = blockIdx.x * CW, m = blockIdx.y, b = m / p.H, h = m % p.H, N = p.num_chunks;
  const size_t row_stride = static_cast<size_t>(p.H) * D, state_size = static_cast<size_t>(D) * D;
  const size_t first_row = static_cast<size_t>(b) * p.T * row_stride + static_cast<size_t>(h) * D;
  const float a = p.A[h];
  const auto fetch = [&](int n) {  // chunk n's rows of x (the block's columns) and of B
    const int t0 = n * kChunk;
    copy_async<kChunk, CW, kThreads>(xs(n), p.x + first_row + t0 * row_stride + row0, row_stride, p.T - t0);
    copy_async<kChunk, D, kThreads>(bs(n), p.b + first_row + t0 * row_stride, row_stride, p.T - t0);
  };
  const auto deltas = [&](int n) { return ssd_common::chunk_deltas(p.delta, b, h, n * kChunk, p.T); };
  const auto prepare = [&](int n, float2 d) {
    prepare_chunk(d, a, gamma, dl, factors + (n % 2) * kChunk, decays + n % 2);
  };
  const auto scale = [&](int n) {
    const float* f = factors + (n % 2) * kChunk;
    scale_rows<kChunk, CW, kThreads>(xs(n), [&](int t) { return f[t]; });
  };
  const int cb = warp % CB;
  for_each_restart_segment(p.segment_begins, N, blockIdx.z, gridDim.z, [&](int begin, int end, bool first,
                                                                         bool last) {
    fetch(begin);
    cp_async_commit();
    if (begin + 1 < end) fetch(begin + 1);
    cp_async_commit();
    float2 d_next{};  // warp 0: the deltas of the chunk it prepares next
    if (warp == 0) {
      prepare(begin, deltas(begin));
      if (begin + 1 < end) d_next = deltas(begin + 1);
    }
    Acc s[kPerWarp];
#pragma unroll
    for (int i = 0; i < kPerWarp; ++i) {
      const int f = warp + kWarps * i;
      if (first && f < kTiles && p.initial != nullptr)
        wmma::load_matrix_sync(s[i], p.initial + m * state_size + (row0 + 16 * (f / CB)) * D + 16 * cb, D,
                               wmma::mem_row_major);
      else
        wmma::fill_fragment(s[i], 0.0f);
    }
    cp_async_wait<1>();  // chunk begin's rows
    __syncthreads();
    scale(begin);
    for (int n = begin; n < end; ++n) {
      if (n + 2 < end) fetch(n + 2);
      cp_async_commit();  // possibly empty: one group per step
      if (warp == 0 && n + 1 < end) {
        prepare(n + 1, d_next);
        if (n + 2 < end) d_next = deltas(n + 2);
      }
      if (p.starts != nullptr && p.starts[n]) {  // a document's first chunk (uniform over the block)
#pragma unroll
        for (int i = 0; i < kPerWarp; ++i) wmma::fill_fragment(s[i], 0.0f);
      }
      Bf16* states_n = p.states + (static_cast<size_t>(m) * N + n) * state_size;
#pragma unroll
      for (int i = 0; i < kPerWarp; ++i) {
        const int f = warp + kWarps * i;
        if (f >= kTiles) continue;
        const int r0 = row0 + 16 * (f / CB);
        emit_tile(s[i], scratch, [&](int row, int col, const float* x) {
          *reinterpret_cast<uint4*>(states_n + (r0 + row) * D + 16 * cb + col) = pack8(x);
        });
      }
      cp_async_wait<1>();  // chunk n + 1's rows (n + 2's may still be in flight)
      __syncthreads();     // and chunk n + 1's f_t, chunk n's scaled rows
      if (n + 1 < end) scale(n + 1);
      const float decay = decays[n % 2];
#pragma unroll
      for (int i = 0; i < kPerWarp; ++i)
#pragma unroll
        for (int e = 0; e < s[i].num_elements; ++e) s[i].x[e] *= decay;
      const Bf16 *x_n = xs(n), *b_n = bs(n);
#pragma unroll
      for (int k0 = 0; k0 < kChunk; k0 += 16) {
        FragB bm;
        wmma::load_matrix_sync(bm, b_n + k0 * ldb + 16 * cb, ldb);
#pragma unroll
        for (int i = 0; i < kPerWarp; ++i) {
          const int f = warp + kWarps * i;
          if (f >= kTiles) continue;
          FragAt at;  // (diag(f) X)^T: A's row r is x's column r (col-major view)
          wmma::load_matrix_sync(at, x_n + k0 * ldx + 16 * (f / CB), ldx);
          wmma::mma_sync(s[i], at, bm, s[i]);
        }
      }
      __syncthreads();  // chunk n's buffer, its decay and chunk n + 1's scaling done
    }
    if (last) {
#pragma unroll
      for (int i = 0; i < kPerWarp; ++i) {
        const int f = warp + kWarps * i;
        if (f < kTiles)
          wmma::store_matrix_sync(p.final_state + m * state_size + (row0 + 16 * (f / CB)) * D + 16 * cb, s[i], D,
                                  wmma::mem_row_major);
      }
    }
  });
}

// ---- the per-chunk output ----------------------------------------------------------------------
constexpr int kLdM = ld_of(kChunk);

template <int D>
constexpr size_t output_shared_bytes() {
  return kChunk * (sizeof(double) + sizeof(float)) + (3 * kChunk + D) * ld_of(D) * sizeof(Bf16) +
         kChunk * kLdM * sizeof(Bf16) + kWarps * kScratchBytes;
}

// Y tiles are tasks (16-row block r, 16 NT columns); M's row block r has columns < 16 (r + 1) only.
template <int D, int NT, typename Out>
__global__ void __launch_bounds__(kThreads, 2) ssd_forward_output_bf16_kernel(const Bf16SsdParams p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  constexpr int ld = ld_of(D);
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* dl = reinterpret_cast<float*>(gamma + kChunk);      // [64]
  Bf16* cs = reinterpret_cast<Bf16*>(dl + kChunk);           // [64][ld]: C, then diag(e^Gamma) C
  Bf16* bs = cs + kChunk * ld;                               // [64][ld]: B
  Bf16* xs = bs + kChunk * ld;                               // [64][ld]: x
  Bf16* ss = xs + kChunk * ld;                               // [D][ld]: S_n [P][N]
  Bf16* ms = ss + D * ld;                                    // [64][kLdM]: M
  const int warp = threadIdx.x / 32;
  float* scratch = reinterpret_cast<float*>(ms + kChunk * kLdM) + warp * (kScratchBytes / 4);
  const int chunk = blockIdx.x, m = blockIdx.y, b = m / p.H, h = m % p.H, t0 = chunk * kChunk;
  const size_t row_stride = static_cast<size_t>(p.H) * D;
  const size_t first_row = (static_cast<size_t>(b) * p.T + t0) * row_stride + static_cast<size_t>(h) * D;
  copy_async<kChunk, D, kThreads>(cs, p.c + first_row, row_stride, p.T - t0);
  copy_async<kChunk, D, kThreads>(bs, p.b + first_row, row_stride, p.T - t0);
  cp_async_commit();
  copy_async<D, D, kThreads>(ss, p.states + (static_cast<size_t>(m) * p.num_chunks + chunk) * D * D, D);
  copy_async<kChunk, D, kThreads>(xs, p.x + first_row, row_stride, p.T - t0);
  cp_async_commit();
  ssd_common::chunk_gamma(p.delta, p.A, b, h, t0, p.T, gamma, dl);
  cp_async_wait<1>();  // C and B
  __syncthreads();

  // M = (C B^T) o L with L_tj = delta_j e^{Gamma_t - Gamma_j}
  decayed_causal_scores<D>(ms, kLdM, cs, bs, gamma, scratch, [&](int j) { return dl[j]; });
  __syncthreads();  // C read
  scale_rows<kChunk, D, kThreads>(cs, [&](int t) { return expf(static_cast<float>(gamma[t])); });
  cp_async_wait<0>();
  __syncthreads();
  constexpr int kGroups = D / (16 * NT), kTasks = 4 * kGroups;
  Out* y = static_cast<Out*>(p.y);
  for (int task = warp; task < kTasks; task += kWarps) {
    const int r = task % 4, col0 = (task / 4) * 16 * NT;
    Acc acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) wmma::fill_fragment(acc[t], 0.0f);
    row_block_product<NT, /*Transposed=*/true>(acc, cs + 16 * r * ld, ld, D, ss, ld, col0);  // C S_n^T
    row_block_product<NT>(acc, ms + 16 * r * kLdM, kLdM, 16 * (r + 1), xs, ld, col0);         // + M X
#pragma unroll
    for (int t = 0; t < NT; ++t)
      emit_tile(acc[t], scratch, [&](int row, int col, const float* x) {
        const int time = t0 + 16 * r + row;
        if (time >= p.T) return;
        Out* out = y + ((static_cast<size_t>(b) * p.T + time) * p.H + h) * D + col0 + 16 * t + col;
        if constexpr (std::is_same_v<Out, float>) {
          reinterpret_cast<float4*>(out)[0] = make_float4(x[0], x[1], x[2], x[3]);
          reinterpret_cast<float4*>(out)[1] = make_float4(x[4], x[5], x[6], x[7]);
        } else {
          *reinterpret_cast<uint4*>(out) = pack8(x);
        }
      });
  }
}

template <int D>
void launch_both(const Bf16SsdParams& p, int64_t M, int slots, bool fp32_out) {
  constexpr int CW = D == 32 ? 32 : 64, NT = D == 128 ? 4 : 2;
  const dim3 per_tile(D / CW, static_cast<unsigned>(M), static_cast<unsigned>(slots));
  launch_with_shared(ssd_forward_walk_bf16_kernel<D, CW>, per_tile, walk_shared_bytes<D, CW>(), kThreads, p,
                     "ssd_forward_walk_bf16_kernel");
  const dim3 per_chunk(static_cast<unsigned>(p.num_chunks), static_cast<unsigned>(M));
  if (fp32_out)
    launch_with_shared(ssd_forward_output_bf16_kernel<D, NT, float>, per_chunk, output_shared_bytes<D>(), kThreads,
                       p, "ssd_forward_output_bf16_kernel");
  else
    launch_with_shared(ssd_forward_output_bf16_kernel<D, NT, Bf16>, per_chunk, output_shared_bytes<D>(), kThreads,
                       p, "ssd_forward_output_bf16_kernel");
}

}  // namespace

void launch_ssd_forward_bf16(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                             const at::Tensor& Cm, const at::Tensor& initial, const at::Tensor& restart,
                             const at::Tensor& states, const at::Tensor& final_state, const at::Tensor& y) {
  const char* op = "ssd_forward_bf16";
  check_operand(x, op, "x", at::kBFloat16, 4);
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), M = B * H;
  const int64_t N = (T + kChunk - 1) / kChunk;
  PRIME_CHECK(D == 32 || D == 64 || D == 128, op, ": head dim ", D, " is not 32, 64 or 128");
  PRIME_CHECK(M <= 65535 && N <= 65535, op, ": batch * heads and the chunk count must be <= 65535");
  check_operand_sizes(Bm, op, "Bm", at::kBFloat16, x.sizes());
  check_operand_sizes(Cm, op, "Cm", at::kBFloat16, x.sizes());
  PRIME_CHECK(delta.defined() && delta.is_cuda() && delta.scalar_type() == at::kFloat &&
                  delta.sizes() == at::IntArrayRef({B, T, H}),
              op, ": delta must be a [", B, ", ", T, ", ", H, "] fp32 CUDA tensor");
  check_operand_sizes(A, op, "A", at::kFloat, {H});
  PRIME_CHECK(y.defined() && (y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16), op,
              ": y must be fp32 or bf16");
  check_operand_sizes(y, op, "y", y.scalar_type(), x.sizes());
  check_operand_sizes(states, op, "states", at::kBFloat16, {M, N, D, D});
  check_operand_sizes(final_state, op, "final_state", at::kFloat, {M, D, D});
  if (initial.defined()) check_operand_sizes(initial, op, "initial", at::kFloat, {M, D, D});
  if (restart.defined()) check_operand_sizes(restart, op, "restart", at::kBool, {N});
  for (const auto& [tensor, name] : {std::pair{&x, "x"}, std::pair{&Bm, "Bm"}, std::pair{&Cm, "Cm"},
                                     std::pair{&states, "states"}, std::pair{&y, "y"}})
    check_aligned(*tensor, op, name, 16);
  check_aligned(final_state, op, "final_state", 32);
  if (initial.defined()) check_aligned(initial, op, "initial", 32);
  for (const at::Tensor* operand : {&delta, &A, &Bm, &Cm, &states, &final_state, &y, &initial, &restart})
    PRIME_CHECK(!operand->defined() || operand->device() == x.device(), op, ": operands on different devices");
  if (M == 0 || N == 0) return;
  Bf16SsdParams p{};
  p.x = reinterpret_cast<const Bf16*>(x.data_ptr());
  p.b = reinterpret_cast<const Bf16*>(Bm.data_ptr());
  p.c = reinterpret_cast<const Bf16*>(Cm.data_ptr());
  p.delta = ssd_common::make_delta_view(delta);
  p.A = A.data_ptr<float>();
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.num_chunks = static_cast<int>(N);
  p.states = reinterpret_cast<Bf16*>(states.data_ptr());
  p.initial = initial.defined() ? initial.data_ptr<float>() : nullptr;
  p.final_state = final_state.data_ptr<float>();
  p.starts = restart.defined() ? restart.data_ptr<bool>() : nullptr;
  p.y = y.data_ptr();
  const at::cuda::CUDAGuard guard(x.device());
  const RestartSegments segments = restart_segments(restart, N, M * (D == 32 ? 1 : D / 64));  // the walk's grid
  p.segment_begins = segments.data();
  const bool fp32_out = y.scalar_type() == at::kFloat;
  if (D == 32)
    launch_both<32>(p, M, segments.slots, fp32_out);
  else if (D == 64)
    launch_both<64>(p, M, segments.slots, fp32_out);
  else
    launch_both<128>(p, M, segments.slots, fp32_out);
}

}  // namespace prime::kernels::detail
