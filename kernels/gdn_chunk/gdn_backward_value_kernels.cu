// The value side of GDN's backward with bf16 products (launch_gdn_backward_value in gdn_chunk_launch.h), one
// block of 8 warps per 64-step chunk: from dU (the fused reverse walk's), the state S entering the chunk,
// T = (I + A)^-1 and the chunk's rows of v and k, all bf16,
//   dW = -dU S^T;  dT = dU (diag(beta) V)^T + dW (diag(beta e^Gamma) K)^T;  dV = diag(beta) T^T dU,
// and each row's dot of T^T dU with v (dbeta's part). Three chunk_gemm launches formed them before, each reading
// dU again and dT reading dW back. Every product is the bf16 MMA chunk_gemm issues (m16n8k16, fragments from
// ldmatrix, the depth in ascending order, accumulated in place from zero) and each epilogue takes chunk_gemm's
// order of operations (gdn_backward_sums.cuh; dT's two column scales rounded each on its own, then added, as
// chunk_gemm's epilogue rounds them): dW, dT, dV and the dots are its bits. Shared memory (ValueShared): dU [64][D],
// S [D][D] (dW [64][D] once S is read: 64 rows at D = 32), T [64][64], v and k [64][D], bf16 rows of ld_of(width)
// elements; 94 KB at D = 128, two blocks per SM. dU and S arrive first (one cp.async group), T, v and k while dW
// is formed.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

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

struct ValueParams {
  const Bf16 *d_u, *states, *inverse;  // [MN,64,D], [MN,D,D], [MN,64,64]
  const Bf16 *v, *k;                   // [B,H,N,64,D] rows
  ChunkRows v_at, k_at;
  const float *beta, *e_gamma;  // [MN,64]
  int H, N;
  Bf16* d_w;        // [MN,64,D]
  Bf16* d_inverse;  // [MN,64,64]
  void* dv;         // [B,H,N,64,D] rows, bf16 or fp32
  ChunkRows dv_at;
  float* v_dots;  // [MN, tiles, 64]
};

// The block's shared matrices, offsets in bf16 elements.
template <int D>
struct ValueShared {
  static constexpr int kLd = ld_of(D);
  // S's space takes dW [64][D] once read: D rows, or 64 where D is 32.
  static constexpr int kSRows = D > kChunk ? D : kChunk;
  static constexpr int kDu = 0, kS = kDu + kChunk * kLd, kT = kS + kSRows * kLd, kV = kT + kChunk * kLd64,
                       kK = kV + kChunk * kLd, kElements = kK + kChunk * kLd;
  static constexpr int kBytes = kElements * static_cast<int>(sizeof(Bf16));
};
static_assert(ValueShared<128>::kBytes + 2 * 1024 <= 227 * 1024 / 2, "two blocks per SM at D = 128");

template <int D, typename Out>
__global__ void __launch_bounds__(kThreads, 2) gdn_backward_value_kernel(const ValueParams p) {
  using L = ValueShared<D>;
  constexpr int kLd = L::kLd, kTiles = (D + 63) / 64;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  Bf16* shared = reinterpret_cast<Bf16*>(shared_bytes);
  Bf16 *du = shared + L::kDu, *s = shared + L::kS, *t_rows = shared + L::kT, *v = shared + L::kV,
       *k = shared + L::kK;
  Bf16* dw = s;  // once every warp has read S
  __shared__ float beta[kChunk], k_scale[kChunk];
  __shared__ float row_dots[kTiles][2][kChunk];  // per 64-column tile, per half of it
  const size_t chunk = blockIdx.x;
  copy_async<kChunk, D, kThreads>(du, p.d_u + chunk * kChunk * D, D);
  copy_async<D, D, kThreads>(s, p.states + chunk * D * D, D);
  cp_async_commit();
  copy_async<kChunk, kChunk, kThreads>(t_rows, p.inverse + chunk * kChunk * kChunk, kChunk);
  copy_async<kChunk, D, kThreads>(v, chunk_rows(p.v, p.v_at, chunk, p.H, p.N), static_cast<size_t>(p.v_at.row));
  copy_async<kChunk, D, kThreads>(k, chunk_rows(p.k, p.k_at, chunk, p.H, p.N), static_cast<size_t>(p.k_at.row));
  cp_async_commit();
  if (threadIdx.x < kChunk) {  // dT's column scales, beta and beta e^Gamma as the product of fp32 tensors gives it
    const float b = p.beta[chunk * kChunk + threadIdx.x];
    beta[threadIdx.x] = b;
    k_scale[threadIdx.x] = __fmul_rn(b, p.e_gamma[chunk * kChunk + threadIdx.x]);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int r0 = 16 * (warp % 4);  // the warp's row block in dW and dT
  cp_async_wait<1>();
  __syncthreads();
  {  // dW = -dU S^T: the warp's 16 rows by D / 2 columns (B = S^T, read from S's rows)
    constexpr int kTilesPerWarp = D / 32;
    const int c0 = (warp / 4) * (D / 2);
    Acc acc[kTilesPerWarp];
#pragma unroll
    for (int u = 0; u < kTilesPerWarp; ++u) fill(acc[u], 0.0f);
    row_block_product<kTilesPerWarp, true>(acc, du + r0 * kLd, kLd, D, s, kLd, c0);
    __syncthreads();  // S read by every warp: its memory takes dW
#pragma unroll
    for (int u = 0; u < kTilesPerWarp; ++u)
      for_each_pair(acc[u], [&](int row, int col, float x0, float x1) {
        store_pair(dw + (r0 + row) * kLd + c0 + 16 * u + col, -x0, -x1);
      });
  }
  cp_async_wait<0>();
  __syncthreads();  // dW whole; T, v and k landed
  for_each_vector<kChunk, D, kThreads>([&](int row, int col) {
    *reinterpret_cast<uint4*>(p.d_w + (chunk * kChunk + row) * D + col) =
        *reinterpret_cast<const uint4*>(dw + row * kLd + col);
  });
  {  // dT: the warp's 16 rows by 32 columns, dU V^T and dW K^T each times its column scale, then their sum
    const int c0 = 32 * (warp / 4);
    Acc from_v[2], from_k[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) fill(from_v[u], 0.0f), fill(from_k[u], 0.0f);
    row_block_product<2, true>(from_v, du + r0 * kLd, kLd, D, v, kLd, c0);
    row_block_product<2, true>(from_k, dw + r0 * kLd, kLd, D, k, kLd, c0);
    Bf16* out = p.d_inverse + chunk * kChunk * kChunk;
#pragma unroll
    for (int u = 0; u < 2; ++u)
#pragma unroll
      for (int e = 0; e < 8; e += 2) {
        const int row = r0 + g + 8 * ((e / 2) % 2), col = c0 + 16 * u + 8 * (e / 4) + 2 * t;
        const float x0 = __fadd_rn(__fmul_rn(from_k[u].x[e], k_scale[col]), __fmul_rn(from_v[u].x[e], beta[col]));
        const float x1 =
            __fadd_rn(__fmul_rn(from_k[u].x[e + 1], k_scale[col + 1]), __fmul_rn(from_v[u].x[e + 1], beta[col + 1]));
        store_pair(out + row * kChunk + col, x0, x1);
      }
  }
  // dV = diag(beta) T^T dU in units of 16 rows by 32 columns (A = T^T, read from T's rows); each row's dot with v
  // before beta (chunk_gemm's epilogue of a term with a row scale and dots).
  Out* dv = chunk_rows(static_cast<Out*>(p.dv), p.dv_at, chunk, p.H, p.N);
  for (int unit = warp; unit < 4 * (D / 32); unit += kThreads / 32) {
    const int u0 = 16 * (unit % 4), c0 = 32 * (unit / 4);
    Acc acc[2], out[2];
    fill(acc[0], 0.0f), fill(acc[1], 0.0f);
    transposed_row_block_product<2>(acc, t_rows + u0, kLd64, 0, kChunk, du, kLd, c0);
    fold_term<true, false>(out, acc, v, kLd, u0, c0, beta, row_dots[c0 / 64][(c0 / 32) % 2]);
#pragma unroll
    for (int u = 0; u < 2; ++u)
      for_each_pair(out[u], [&](int row, int col, float x0, float x1) {
        store_pair(dv + (u0 + row) * p.dv_at.row + c0 + 16 * u + col, x0, x1);
      });
  }
  __syncthreads();
  write_row_dots<D, kThreads>(row_dots, p.v_dots + chunk * kTiles * kChunk);
}

}  // namespace

bool gdn_backward_value_apply(const at::Tensor& d_u, const at::Tensor& states, const at::Tensor& v,
                              const at::Tensor& k) {
  if (!gdn_backward_key_rows_apply(v, k) || !d_u.defined() || !states.defined()) return false;
  const int64_t MN = v.size(0) * v.size(1) * v.size(2), D = v.size(4);
  for (const at::Tensor* x : {&d_u, &states})
    if (!x->is_cuda() || x->device() != v.device() || x->scalar_type() != at::kBFloat16 || !x->is_contiguous() ||
        reinterpret_cast<uintptr_t>(x->data_ptr()) % 16 != 0 || x->numel() == 0)
      return false;
  return d_u.numel() == MN * kChunk * D && states.numel() == MN * D * D;
}

void launch_gdn_backward_value(const GdnBackwardValue& x) {
  const char* op = "gdn_backward_value";
  PRIME_CHECK(gdn_backward_value_apply(x.d_u, x.states, x.v, x.k), op,
              ": d_u and states must be contiguous bf16 CUDA tensors on 16 bytes with v and k's chunks, and v and k ",
              "bf16 rows [B,H,N,64,D] of head dim 32, 64 or 128 on 16 bytes (d_u ",
              x.d_u.defined() ? x.d_u.sizes() : at::IntArrayRef{}, ", states ",
              x.states.defined() ? x.states.sizes() : at::IntArrayRef{}, ", v ",
              x.v.defined() ? x.v.sizes() : at::IntArrayRef{}, ")");
  const int64_t B = x.v.size(0), H = x.v.size(1), N = x.v.size(2), D = x.v.size(4), MN = B * H * N;
  const int64_t tiles = (D + 63) / 64;
  check_operand_sizes(x.d_u, op, "d_u", at::kBFloat16, {MN, kChunk, D});
  check_operand_sizes(x.states, op, "states", at::kBFloat16, {MN, D, D});
  check_operand_sizes(x.inverse, op, "T", at::kBFloat16, {MN, kChunk, kChunk});
  check_operand_sizes(x.beta, op, "beta", at::kFloat, {MN, kChunk});
  check_operand_sizes(x.e_gamma, op, "e_gamma", at::kFloat, {MN, kChunk});
  check_operand_sizes(x.d_w, op, "d_w", at::kBFloat16, {MN, kChunk, D});
  check_operand_sizes(x.d_inverse, op, "d_inverse", at::kBFloat16, {MN, kChunk, kChunk});
  check_operand_sizes(x.v_dots, op, "v_dots", at::kFloat, {MN, tiles, kChunk});
  for (const auto& [tensor, name] : {std::pair{&x.inverse, "T"}, {&x.d_w, "d_w"}, {&x.d_inverse, "d_inverse"}})
    check_aligned(*tensor, op, name, 16);
  const at::Tensor& dv = x.dv;
  const bool dv_bf16 = dv.defined() && dv.scalar_type() == at::kBFloat16;
  check_gradient_rows(dv, x.v, dv_bf16 ? at::kBFloat16 : at::kFloat, op, "dv");
  if (MN == 0) return;
  const at::cuda::CUDAGuard guard(x.v.device());
  const auto bits = [](const at::Tensor& t) { return reinterpret_cast<const Bf16*>(t.data_ptr()); };
  const ValueParams p{bits(x.d_u),
                      bits(x.states),
                      bits(x.inverse),
                      bits(x.v),
                      bits(x.k),
                      chunk_rows_of(x.v),
                      chunk_rows_of(x.k),
                      x.beta.data_ptr<float>(),
                      x.e_gamma.data_ptr<float>(),
                      static_cast<int>(H),
                      static_cast<int>(N),
                      reinterpret_cast<Bf16*>(x.d_w.data_ptr()),
                      reinterpret_cast<Bf16*>(x.d_inverse.data_ptr()),
                      dv.data_ptr(),
                      chunk_rows_of(dv),
                      x.v_dots.data_ptr<float>()};
  const dim3 grid(static_cast<unsigned>(MN));
  const auto launch = [&](auto head_dim) {
    constexpr int kD = decltype(head_dim)::value;
    if (dv_bf16)
      launch_with_shared(gdn_backward_value_kernel<kD, Bf16>, grid, ValueShared<kD>::kBytes, kThreads, p,
                         "gdn_backward_value_kernel");
    else
      launch_with_shared(gdn_backward_value_kernel<kD, float>, grid, ValueShared<kD>::kBytes, kThreads, p,
                         "gdn_backward_value_kernel");
  };
  switch (D) {
    case 32: launch(std::integral_constant<int, 32>{}); break;
    case 64: launch(std::integral_constant<int, 64>{}); break;
    default: launch(std::integral_constant<int, 128>{}); break;
  }
}

}  // namespace prime::kernels::detail
