// dq and dk of GDN's backward with bf16 products (launch_gdn_backward_query_key in gdn_chunk_launch.h), one block
// of 8 warps per 64-step chunk for each, as the two chunk_gemm sums the chain rule made (chain_rule_sums in
// gdn_chunk_backward.cpp):
//   dq = d(QK^T) K + diag(e^Gamma) dO S^T,
//   dk = d(QK^T)^T Q + d(KK^T)^T K + diag(beta e^Gamma) T^T dW + diag(e^{Gamma_C - Gamma}) U G^T,
// with the row dots dg and dbeta take (dO S^T . q, T^T dW . k, U G^T . k). chunk_gemm forms each 64 x 64 output tile
// in its own block, so every chunk's left operands (d(QK^T), dO, d(KK^T), T, U) were read once per 64 columns and
// each block's terms ran one 64-deep slab after another on 4 warps. Here a block holds a chunk's operands whole:
// every operand is read once, all of a chunk's copies are in flight from the start, and each warp owns 16 rows by
// up to 64 columns of the output across the terms. Every product is the bf16 MMA chunk_gemm issues (m16n8k16,
// fragments by ldmatrix, the depth ascending, accumulated in place from zero) and the terms fold in its order with
// its epilogue (gdn_backward_sums.cuh): the same bits. Shared memory, bf16 rows of ld_of(width) elements: dq's
// block d(QK^T), K, dO, S and Q (94 KB at D = 128); dk's Q and d(QK^T), K and d(KK^T), T and dW, then U G^T's depth
// in halves of 64 (the second half into the first term's space once it is read): 106 KB at D = 128. Two blocks per
// SM each.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "kernels/common/bf16_tiles.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/gdn_chunk/gdn_backward_sums.cuh"
#include "kernels/gdn_chunk/gdn_chunk_launch.h"
#include "kernels/gdn_chunk/gdn_chunk_rows.cuh"

namespace prime::kernels::detail {

namespace {

using namespace bf16_tiles;
using backward_sums::fold_term;
using backward_sums::store_pair;
using backward_sums::write_row_dots;

constexpr int kChunk = 64;
constexpr int kThreads = 256;
constexpr int kLd64 = ld_of(kChunk);

struct QueryKeyParams {
  const Bf16 *d_qk, *d_kk, *inverse;  // [MN,64,64]
  const Bf16 *q, *k, *d_o;            // [B,H,N,64,D] rows
  ChunkRows q_at, k_at, d_o_at;
  const Bf16 *states, *grads_after;  // [MN,D,D]
  const Bf16 *u, *d_w;               // [MN,64,D]
  const float *e_gamma, *k_scale, *to_end;  // [MN,64]
  int H, N;
  void *dq, *dk;  // [B,H,N,64,D] rows, bf16 or fp32
  ChunkRows dq_at, dk_at;
  float *q_dots, *k_in_dots, *k_decayed_dots;  // [MN, tiles, 64]
};

// The output a warp owns across the terms: 16 rows at row0 by kCols columns at col0 (kCols / 32 units of 32 columns),
// 64 x D among 8 warps; at D = 32 four warps own it and four take no output (only copies).
template <int D>
struct WarpBlock {
  static constexpr int kCols = D / 2 > 32 ? D / 2 : 32, kUnits = kCols / 32, kTiles16 = kCols / 16;
  int row0, col0;
  bool owns;
  __device__ WarpBlock() {
    const int warp = threadIdx.x / 32;
    row0 = 16 * (warp % 4), col0 = (warp / 4) * kCols, owns = col0 < D;
  }
  // The unit's dots go to row_dots[tile][half of the 64 columns] (chunk_gemm's two warps' halves).
  __device__ float* dots(float (*row_dots)[2][kChunk], int unit) const {
    const int col = col0 + 32 * unit;
    return row_dots[col / 64][(col / 32) % 2];
  }
};

// The output's pairs from the warp's sum into the gradient's rows.
template <int D, typename Out>
__device__ __forceinline__ void store_block(const WarpBlock<D>& w, const Acc* sum, Out* rows, long long row_stride) {
#pragma unroll
  for (int f = 0; f < WarpBlock<D>::kTiles16; ++f)
    for_each_pair(sum[f], [&](int row, int col, float x0, float x1) {
      store_pair(rows + (w.row0 + row) * row_stride + w.col0 + 16 * f + col, x0, x1);
    });
}

template <int D>
struct QueryShared {  // offsets in bf16 elements
  static constexpr int kLd = ld_of(D);
  static constexpr int kDqk = 0, kK = kDqk + kChunk * kLd64, kDo = kK + kChunk * kLd, kS = kDo + kChunk * kLd,
                       kQ = kS + D * kLd, kElements = kQ + kChunk * kLd;
  static constexpr int kBytes = kElements * static_cast<int>(sizeof(Bf16));
};

// dq: d(QK^T) K (d(QK^T) and K land first), then diag(e^Gamma) dO S^T with its rows' dots with q.
template <int D, typename Out>
__global__ void __launch_bounds__(kThreads, 2) gdn_backward_dq_kernel(const QueryKeyParams p) {
  using L = QueryShared<D>;
  using W = WarpBlock<D>;
  constexpr int kLd = L::kLd, kTiles = (D + 63) / 64;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  Bf16* shared = reinterpret_cast<Bf16*>(shared_bytes);
  const Bf16 *d_qk = shared + L::kDqk, *k = shared + L::kK, *d_o = shared + L::kDo, *s = shared + L::kS,
             *q = shared + L::kQ;
  __shared__ float e_gamma[kChunk];
  __shared__ float row_dots[kTiles][2][kChunk];
  const size_t chunk = blockIdx.x;
  copy_async<kChunk, kChunk, kThreads>(shared + L::kDqk, p.d_qk + chunk * kChunk * kChunk, kChunk);
  copy_async<kChunk, D, kThreads>(shared + L::kK, chunk_rows(p.k, p.k_at, chunk, p.H, p.N), p.k_at.row);
  cp_async_commit();
  copy_async<kChunk, D, kThreads>(shared + L::kDo, chunk_rows(p.d_o, p.d_o_at, chunk, p.H, p.N), p.d_o_at.row);
  copy_async<D, D, kThreads>(shared + L::kS, p.states + chunk * D * D, D);
  cp_async_commit();
  copy_async<kChunk, D, kThreads>(shared + L::kQ, chunk_rows(p.q, p.q_at, chunk, p.H, p.N), p.q_at.row);
  cp_async_commit();
  if (threadIdx.x < kChunk) e_gamma[threadIdx.x] = p.e_gamma[chunk * kChunk + threadIdx.x];
  const W w;
  Acc sum[W::kTiles16], acc[W::kTiles16];
  cp_async_wait<2>();
  __syncthreads();
  if (w.owns) {  // the first term is the sum so far (alpha 1, no scales)
#pragma unroll
    for (int f = 0; f < W::kTiles16; ++f) fill(sum[f], 0.0f);
    row_block_product<W::kTiles16>(sum, d_qk + w.row0 * kLd64, kLd64, kChunk, k, kLd, w.col0);
  }
  cp_async_wait<1>();
  __syncthreads();
  if (w.owns) {
#pragma unroll
    for (int f = 0; f < W::kTiles16; ++f) fill(acc[f], 0.0f);
    row_block_product<W::kTiles16, true>(acc, d_o + w.row0 * kLd, kLd, D, s, kLd, w.col0);
  }
  cp_async_wait<0>();
  __syncthreads();
  if (w.owns) {
#pragma unroll
    for (int unit = 0; unit < W::kUnits; ++unit)
      fold_term<true, true>(sum + 2 * unit, acc + 2 * unit, q, kLd, w.row0, w.col0 + 32 * unit, e_gamma,
                            w.dots(row_dots, unit));
    store_block(w, sum, chunk_rows(static_cast<Out*>(p.dq), p.dq_at, chunk, p.H, p.N), p.dq_at.row);
  }
  __syncthreads();
  write_row_dots<D, kThreads>(row_dots, p.q_dots + chunk * kTiles * kChunk);
}

template <int D>
struct KeyShared {  // offsets in bf16 elements
  static constexpr int kLd = ld_of(D);
  // U G^T's depth in stages of kDepth3 (two at D = 128): U's columns and G's columns of the stage.
  static constexpr int kStages3 = D > 64 ? 2 : 1, kDepth3 = D / kStages3, kLd3 = ld_of(kDepth3);
  static constexpr int kStage3 = (kChunk + D) * kLd3;
  // Region one holds Q and d(QK^T), then U G^T's second stage.
  static constexpr int kRegion1 = std::max(kChunk * kLd + kChunk * kLd64, kStages3 > 1 ? kStage3 : 0);
  static constexpr int kQ = 0, kDqk = kQ + kChunk * kLd, kK = kRegion1, kDkk = kK + kChunk * kLd,
                       kT = kDkk + kChunk * kLd64, kDw = kT + kChunk * kLd64, kU3 = kDw + kChunk * kLd,
                       kElements = kU3 + kStage3;
  static constexpr int kBytes = kElements * static_cast<int>(sizeof(Bf16));
  // Stage `stage` of U G^T: U's and G's columns [stage kDepth3, + kDepth3).
  static constexpr int u3(int stage) { return stage == 0 ? kU3 : 0; }
  static constexpr int g3(int stage) { return u3(stage) + kChunk * kLd3; }
};
static_assert(QueryShared<128>::kBytes + 2 * 1024 <= 227 * 1024 / 2, "two dq blocks per SM at D = 128");
static_assert(KeyShared<128>::kBytes + 3 * 1024 <= 227 * 1024 / 2, "two dk blocks per SM at D = 128");

// Stage `stage` of U G^T's depth into its place (U [64][D] and G [D][D] rows, columns of the stage).
template <int D>
__device__ __forceinline__ void copy_stage3(Bf16* shared, const QueryKeyParams& p, size_t chunk, int stage) {
  using L = KeyShared<D>;
  const int from = stage * L::kDepth3;
  copy_async<kChunk, L::kDepth3, kThreads>(shared + L::u3(stage), p.u + chunk * kChunk * D + from, D);
  copy_async<D, L::kDepth3, kThreads>(shared + L::g3(stage), p.grads_after + chunk * D * D + from, D);
}

// dk: its four terms in chunk_gemm's order, T^T dW's and U G^T's rows dotted with k.
template <int D, typename Out>
__global__ void __launch_bounds__(kThreads, 2) gdn_backward_dk_kernel(const QueryKeyParams p) {
  using L = KeyShared<D>;
  using W = WarpBlock<D>;
  constexpr int kLd = L::kLd, kTiles = (D + 63) / 64;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  Bf16* shared = reinterpret_cast<Bf16*>(shared_bytes);
  const Bf16 *q = shared + L::kQ, *d_qk = shared + L::kDqk, *k = shared + L::kK, *d_kk = shared + L::kDkk,
             *t_rows = shared + L::kT, *d_w = shared + L::kDw;
  __shared__ float k_scale[kChunk], to_end[kChunk];
  __shared__ float row_dots[2][kTiles][2][kChunk];  // T^T dW's, U G^T's
  const size_t chunk = blockIdx.x;
  copy_async<kChunk, D, kThreads>(shared + L::kQ, chunk_rows(p.q, p.q_at, chunk, p.H, p.N), p.q_at.row);
  copy_async<kChunk, kChunk, kThreads>(shared + L::kDqk, p.d_qk + chunk * kChunk * kChunk, kChunk);
  cp_async_commit();
  copy_async<kChunk, D, kThreads>(shared + L::kK, chunk_rows(p.k, p.k_at, chunk, p.H, p.N), p.k_at.row);
  copy_async<kChunk, kChunk, kThreads>(shared + L::kDkk, p.d_kk + chunk * kChunk * kChunk, kChunk);
  cp_async_commit();
  copy_async<kChunk, kChunk, kThreads>(shared + L::kT, p.inverse + chunk * kChunk * kChunk, kChunk);
  copy_async<kChunk, D, kThreads>(shared + L::kDw, p.d_w + chunk * kChunk * D, D);
  cp_async_commit();
  copy_stage3<D>(shared, p, chunk, 0);
  cp_async_commit();
  if (threadIdx.x < kChunk) {
    k_scale[threadIdx.x] = p.k_scale[chunk * kChunk + threadIdx.x];
    to_end[threadIdx.x] = p.to_end[chunk * kChunk + threadIdx.x];
  }
  const W w;
  Acc sum[W::kTiles16], acc[W::kTiles16];
  const auto zero = [&]() {
#pragma unroll
    for (int f = 0; f < W::kTiles16; ++f) fill(acc[f], 0.0f);
  };
  cp_async_wait<3>();
  __syncthreads();
  if (w.owns) {  // d(QK^T)^T Q: the sum so far
#pragma unroll
    for (int f = 0; f < W::kTiles16; ++f) fill(sum[f], 0.0f);
    transposed_row_block_product<W::kTiles16>(sum, d_qk + w.row0, kLd64, 0, kChunk, q, kLd, w.col0);
  }
  if constexpr (L::kStages3 > 1) {
    __syncthreads();  // Q and d(QK^T) read by every warp: their space takes U G^T's second stage
    copy_stage3<D>(shared, p, chunk, 1);
    cp_async_commit();
    cp_async_wait<3>();
  } else {
    cp_async_wait<2>();
  }
  __syncthreads();
  if (w.owns) {  // + d(KK^T)^T K
    zero();
    transposed_row_block_product<W::kTiles16>(acc, d_kk + w.row0, kLd64, 0, kChunk, k, kLd, w.col0);
#pragma unroll
    for (int unit = 0; unit < W::kUnits; ++unit)
      fold_term<false, true>(sum + 2 * unit, acc + 2 * unit, nullptr, 0, w.row0, 0, nullptr, nullptr);
  }
  cp_async_wait<L::kStages3>();
  __syncthreads();
  if (w.owns) {  // + diag(beta e^Gamma) T^T dW, its rows dotted with k
    zero();
    transposed_row_block_product<W::kTiles16>(acc, t_rows + w.row0, kLd64, 0, kChunk, d_w, kLd, w.col0);
#pragma unroll
    for (int unit = 0; unit < W::kUnits; ++unit)
      fold_term<true, true>(sum + 2 * unit, acc + 2 * unit, k, kLd, w.row0, w.col0 + 32 * unit, k_scale,
                            w.dots(row_dots[0], unit));
    zero();
  }
#pragma unroll
  for (int stage = 0; stage < L::kStages3; ++stage) {  // + diag(e^{Gamma_C - Gamma}) U G^T, the depth in stages
    if (stage + 1 < L::kStages3)
      cp_async_wait<1>();
    else
      cp_async_wait<0>();
    __syncthreads();
    if (w.owns)
      row_block_product<W::kTiles16, true>(acc, shared + L::u3(stage) + w.row0 * L::kLd3, L::kLd3, L::kDepth3,
                                           shared + L::g3(stage), L::kLd3, w.col0);
  }
  if (w.owns) {
#pragma unroll
    for (int unit = 0; unit < W::kUnits; ++unit)
      fold_term<true, true>(sum + 2 * unit, acc + 2 * unit, k, kLd, w.row0, w.col0 + 32 * unit, to_end,
                            w.dots(row_dots[1], unit));
    store_block(w, sum, chunk_rows(static_cast<Out*>(p.dk), p.dk_at, chunk, p.H, p.N), p.dk_at.row);
  }
  __syncthreads();
  write_row_dots<D, kThreads>(row_dots[0], p.k_in_dots + chunk * kTiles * kChunk);
  write_row_dots<D, kThreads>(row_dots[1], p.k_decayed_dots + chunk * kTiles * kChunk);
}

bool bf16_chunks(const at::Tensor& x, const at::Tensor& like, std::initializer_list<int64_t> sizes) {
  return x.defined() && x.is_cuda() && x.device() == like.device() && x.scalar_type() == at::kBFloat16 &&
         x.is_contiguous() && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 && x.sizes() == sizes;
}

}  // namespace

bool gdn_backward_query_key_apply(const GdnBackwardQueryKey& x) {
  if (!gdn_backward_key_rows_apply(x.q, x.k) || !gdn_backward_key_rows_apply(x.q, x.d_o)) return false;
  const int64_t MN = x.q.size(0) * x.q.size(1) * x.q.size(2), D = x.q.size(4);
  if (MN == 0) return false;
  return bf16_chunks(x.d_qk, x.q, {MN, kChunk, kChunk}) && bf16_chunks(x.d_kk, x.q, {MN, kChunk, kChunk}) &&
         bf16_chunks(x.inverse, x.q, {MN, kChunk, kChunk}) && bf16_chunks(x.states, x.q, {MN, D, D}) &&
         bf16_chunks(x.grads_after, x.q, {MN, D, D}) && bf16_chunks(x.u, x.q, {MN, kChunk, D}) &&
         bf16_chunks(x.d_w, x.q, {MN, kChunk, D});
}

void launch_gdn_backward_query_key(const GdnBackwardQueryKey& x) {
  const char* op = "gdn_backward_query_key";
  PRIME_CHECK(gdn_backward_query_key_apply(x), op,
              ": q, k and d_o must be bf16 CUDA rows [B,H,N,64,D] of head dim 32, 64 or 128 on 16 bytes (q ",
              x.q.defined() ? x.q.sizes() : at::IntArrayRef{},
              "), and d_qk, d_kk, inverse [MN,64,64], states, grads_after [MN,D,D], u and d_w [MN,64,D] contiguous ",
              "bf16 on 16 bytes");
  const int64_t B = x.q.size(0), H = x.q.size(1), N = x.q.size(2), D = x.q.size(4), MN = B * H * N;
  const int64_t tiles = (D + 63) / 64;
  for (const auto& [tensor, name] :
       {std::pair{&x.e_gamma, "e_gamma"}, {&x.k_scale, "k_scale"}, {&x.to_end, "to_end"}})
    check_operand_sizes(*tensor, op, name, at::kFloat, {MN, kChunk});
  for (const auto& [tensor, name] :
       {std::pair{&x.q_dots, "q_dots"}, {&x.k_in_dots, "k_in_dots"}, {&x.k_decayed_dots, "k_decayed_dots"}})
    check_operand_sizes(*tensor, op, name, at::kFloat, {MN, tiles, kChunk});
  const bool out_bf16 = x.dq.defined() && x.dq.scalar_type() == at::kBFloat16;
  for (const auto& [tensor, name] : {std::pair{&x.dq, "dq"}, {&x.dk, "dk"}})  // both bf16 or both fp32
    check_gradient_rows(*tensor, x.q, out_bf16 ? at::kBFloat16 : at::kFloat, op, name);
  const at::cuda::CUDAGuard guard(x.q.device());
  const auto bits = [](const at::Tensor& t) { return reinterpret_cast<const Bf16*>(t.data_ptr()); };
  const QueryKeyParams p{bits(x.d_qk),
                         bits(x.d_kk),
                         bits(x.inverse),
                         bits(x.q),
                         bits(x.k),
                         bits(x.d_o),
                         chunk_rows_of(x.q),
                         chunk_rows_of(x.k),
                         chunk_rows_of(x.d_o),
                         bits(x.states),
                         bits(x.grads_after),
                         bits(x.u),
                         bits(x.d_w),
                         x.e_gamma.data_ptr<float>(),
                         x.k_scale.data_ptr<float>(),
                         x.to_end.data_ptr<float>(),
                         static_cast<int>(H),
                         static_cast<int>(N),
                         x.dq.data_ptr(),
                         x.dk.data_ptr(),
                         chunk_rows_of(x.dq),
                         chunk_rows_of(x.dk),
                         x.q_dots.data_ptr<float>(),
                         x.k_in_dots.data_ptr<float>(),
                         x.k_decayed_dots.data_ptr<float>()};
  const dim3 grid(static_cast<unsigned>(MN));
  const auto launch = [&](auto head_dim, auto out_type) {
    constexpr int kD = decltype(head_dim)::value;
    using Out = decltype(out_type);
    launch_with_shared(gdn_backward_dq_kernel<kD, Out>, grid, QueryShared<kD>::kBytes, kThreads, p,
                       "gdn_backward_dq_kernel");
    launch_with_shared(gdn_backward_dk_kernel<kD, Out>, grid, KeyShared<kD>::kBytes, kThreads, p,
                       "gdn_backward_dk_kernel");
  };
  const auto with_out = [&](auto head_dim) {
    if (out_bf16)
      launch(head_dim, Bf16{});
    else
      launch(head_dim, 0.0f);
  };
  switch (D) {
    case 32: with_out(std::integral_constant<int, 32>{}); break;
    case 64: with_out(std::integral_constant<int, 64>{}); break;
    default: with_out(std::integral_constant<int, 128>{}); break;
  }
}

}  // namespace prime::kernels::detail
