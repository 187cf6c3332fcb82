// CUDA kernels of Mamba-2's chunked SSD forward on bf16 operands (ssd_chunk_launch.h,
// launch_ssd_forward_bf16; the math in ssd_chunk.h), P = N = D. Two launches:
//  - the walk over chunks (ssd_walk_bf16.cuh, forwards): the state entering each chunk, in bf16;
//  - output, one block per (chunk, batch and head): Y = diag(e^Gamma) C S_n^T + M X with
//    M_tj = (C_t . B_j) delta_j e^{Gamma_t - Gamma_j} for j <= t.
// Products on bf16 tensor cores (mma.sync, fp32 accumulation; bf16_tiles.cuh). Gamma (float64 sums), the
// decays and the carried state stay fp32 or wider; the scaled x rows, M and the states entering
// each chunk are rounded to bf16. Chunks are 64 steps; rows past T are zeros.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <type_traits>

#include "kernels/common/bf16_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/restart_segments.cuh"
#include "kernels/ssd_chunk/ssd_chunk_common.cuh"
#include "kernels/ssd_chunk/ssd_chunk_launch.h"
#include "kernels/ssd_chunk/ssd_walk_bf16.cuh"

namespace prime::kernels::detail {

namespace {

using namespace bf16_tiles;
using namespace ssd_bf16;
using ssd_common::DeltaView;

struct Bf16SsdParams {
  const Bf16 *x, *b, *c;  // [B,T,H,D]
  DeltaView delta;        // [B,T,H]
  const float* A;         // [H]
  int T, H, num_chunks;
  const Bf16* states;     // [M,N,D,D]: the state entering each chunk (the walk's output)
  void* y;                // [B,T,H,D], fp32 or bf16
};

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
  decayed_causal_scores<D>(ms, kLdM, cs, bs, gamma, [&](int j) { return dl[j]; });
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
    for (int t = 0; t < NT; ++t) fill(acc[t], 0.0f);
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
void launch_output(const Bf16SsdParams& p, int64_t M, bool fp32_out) {
  constexpr int NT = D == 128 ? 4 : 2;
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
  check_operands(op, x, delta, A, Bm, Cm, restart);
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), M = B * H;
  const int64_t N = (T + kChunk - 1) / kChunk;
  PRIME_CHECK(y.defined() && (y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16), op,
              ": y must be fp32 or bf16");
  check_operand_sizes(y, op, "y", y.scalar_type(), x.sizes());
  check_aligned(y, op, "y", 16);
  PRIME_CHECK(y.device() == x.device(), op, ": operands on different devices");
  const at::cuda::CUDAGuard guard(x.device());
  run_walk</*Reverse=*/false>(op, x, Bm, delta, A, restart, states, initial, final_state);
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
  p.states = reinterpret_cast<const Bf16*>(states.data_ptr());
  p.y = y.data_ptr();
  const bool fp32_out = y.scalar_type() == at::kFloat;
  if (D == 32)
    launch_output<32>(p, M, fp32_out);
  else if (D == 64)
    launch_output<64>(p, M, fp32_out);
  else
    launch_output<128>(p, M, fp32_out);
}

void launch_ssd_walk_bf16(const at::Tensor& u, const at::Tensor& v, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& initial, const at::Tensor& restart, const at::Tensor& states,
                          const at::Tensor& final_state, bool delta_scales_inputs) {
  const char* op = "ssd_walk_bf16";
  check_operands(op, u, delta, A, v, v, restart);
  const at::cuda::CUDAGuard guard(u.device());
  run_walk</*Reverse=*/false>(op, u, v, delta, A, restart, states, initial, final_state, delta_scales_inputs);
}

}  // namespace prime::kernels::detail
