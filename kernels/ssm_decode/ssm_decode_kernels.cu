// CUDA kernels of the fused SSM decode steps (see ssm_decode.h for the ops, ssm_decode_launch.h
// for the operands). Both are bound by memory traffic: at the 8B shape (H = 32, 128 x 128) the
// state is 2 MB per sequence, the vectors 3 KB. Each kernel reads every state element once and
// writes it once, with 16-byte accesses where the rows allow (width 4: row length a multiple of
// 4 and a 16-byte aligned state) and 4-byte ones otherwise; all math is fp32.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/prefetch.cuh"
#include "kernels/ssm_decode/ssm_decode_launch.h"

namespace prime::kernels::detail {

namespace {

constexpr int kWarp = 32;
constexpr int kMaxDim = 256;

// Width consecutive floats at p (16-byte aligned when Width == 4).
template <int Width>
__device__ __forceinline__ void load_row(const float* p, float (&out)[Width]) {
  if constexpr (Width == 4) {
    const float4 value = *reinterpret_cast<const float4*>(p);
    out[0] = value.x, out[1] = value.y, out[2] = value.z, out[3] = value.w;
  } else {
#pragma unroll
    for (int c = 0; c < Width; ++c) out[c] = p[c];
  }
}

template <int Width>
__device__ __forceinline__ void store_row(float* p, const float (&in)[Width]) {
  if constexpr (Width == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
  } else {
#pragma unroll
    for (int c = 0; c < Width; ++c) p[c] = in[c];
  }
}

// The same with the evict-first cache hint (ld.global.cs / st.global.cs): for a stream read once
// and written once, such as a state that no later kernel of the step reads.
template <int Width>
__device__ __forceinline__ void load_row_streaming(const float* p, float (&out)[Width]) {
  if constexpr (Width == 4) {
    const float4 value = __ldcs(reinterpret_cast<const float4*>(p));
    out[0] = value.x, out[1] = value.y, out[2] = value.z, out[3] = value.w;
  } else {
#pragma unroll
    for (int c = 0; c < Width; ++c) out[c] = __ldcs(p + c);
  }
}

template <int Width>
__device__ __forceinline__ void store_row_streaming(float* p, const float (&in)[Width]) {
  if constexpr (Width == 4) {
    __stcs(reinterpret_cast<float4*>(p), make_float4(in[0], in[1], in[2], in[3]));
  } else {
#pragma unroll
    for (int c = 0; c < Width; ++c) __stcs(p + c, in[c]);
  }
}

// ---- GDN ------------------------------------------------------------------------------------
// Layout: one CTA per (b, h, tile of 32 x Width columns of S [Dk, Dv]); lane l owns columns
// l*Width .. l*Width+Width-1 of the tile (a warp's access to one row is 32 x Width consecutive
// floats: coalesced), warp w owns rows 16w .. 16w+15, so a CTA has ceil(Dk/16) <= 16 warps. The
// thread keeps its 16 x Width values in registers (64 floats at Width 4) across the whole step:
// S is loaded once, decayed, reduced against k (S^T k needs all Dk rows of a column: per-warp
// partial sums in registers, then one shared-memory sum across the warps), updated with k u^T,
// stored once, and reduced against q from the same registers. Holding a whole column per thread
// instead would need Dk registers (256 at Dk = 256: spills); splitting the rows across warps
// keeps 64 and costs only two small cross-warp sums. k, q go through shared memory (every
// thread needs all its rows' entries); g, beta, v are read directly.
constexpr int kGdnRowsPerWarp = 16;

__host__ __device__ constexpr int gdn_warps(int dk) { return (dk + kGdnRowsPerWarp - 1) / kGdnRowsPerWarp; }

// The column sums of a [warps][tile] block of per-warp partials, at this thread's columns.
template <int Width>
__device__ __forceinline__ void sum_over_warps(const float* partials, int warps, int tile,
                                               int tile_column, float (&sum)[Width]) {
#pragma unroll
  for (int c = 0; c < Width; ++c) sum[c] = 0.0f;
  for (int w = 0; w < warps; ++w) {
    float part[Width];
    load_row<Width>(partials + w * tile + tile_column, part);
#pragma unroll
    for (int c = 0; c < Width; ++c) sum[c] += part[c];
  }
}

template <int Width>
__global__ void __launch_bounds__(kWarp * kMaxDim / kGdnRowsPerWarp)
gdn_decode_kernel(const float* __restrict__ q, const float* __restrict__ k,
                  const float* __restrict__ v, const float* __restrict__ g,
                  const float* __restrict__ beta, float* __restrict__ state,
                  float* __restrict__ o, int dk, int dv) {
  constexpr int kTile = kWarp * Width;
  // [warps][kTile] partials of S^T k, then of S^T q, then k and q (partials first: 16-byte
  // aligned for the width-4 accesses whatever dk is).
  extern __shared__ __align__(16) float shared[];
  const int warps = blockDim.x / kWarp;
  float* predicted_partial = shared;
  float* output_partial = predicted_partial + warps * kTile;
  float* k_shared = output_partial + warps * kTile;
  float* q_shared = k_shared + dk;

  const int64_t bh = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int tile_column = lane * Width;
  const int column = blockIdx.y * kTile + tile_column;
  const bool owns_columns = column < dv;  // Width 4 implies dv % 4 == 0: all four or none
  const int row0 = warp * kGdnRowsPerWarp;
  float* S = state + bh * dk * dv;
  // The block's state rows into L2 while the kernels before finish (a lane per 128-byte line).
  if (owns_columns && tile_column % 32 == 0)
    for (int r = 0; r < kGdnRowsPerWarp && row0 + r < dk; ++r)
      prefetch_l2(S + static_cast<int64_t>(row0 + r) * dv + column);
  pdl_wait();  // q, k, v and the gates come from the kernels before (pdl.cuh)
  pdl_launch_dependents();

  // The state loads go first, so their latency overlaps the vector loads and the barrier.
  float s[kGdnRowsPerWarp][Width];
#pragma unroll
  for (int r = 0; r < kGdnRowsPerWarp; ++r) {
    if (owns_columns && row0 + r < dk) {
      load_row<Width>(S + static_cast<int64_t>(row0 + r) * dv + column, s[r]);
    } else {
#pragma unroll
      for (int c = 0; c < Width; ++c) s[r][c] = 0.0f;
    }
  }
  for (int i = threadIdx.x; i < dk; i += blockDim.x) {
    k_shared[i] = k[bh * dk + i];
    q_shared[i] = q[bh * dk + i];
  }
  const float decay = expf(g[bh]), beta_bh = beta[bh];
  float v_own[Width];
#pragma unroll
  for (int c = 0; c < Width; ++c) v_own[c] = owns_columns ? v[bh * dv + column + c] : 0.0f;
  __syncthreads();

  // S = e^g S; partial (S^T k) over this warp's rows.
  float partial[Width];
#pragma unroll
  for (int c = 0; c < Width; ++c) partial[c] = 0.0f;
#pragma unroll
  for (int r = 0; r < kGdnRowsPerWarp; ++r) {
    if (row0 + r >= dk) break;
    const float k_r = k_shared[row0 + r];
#pragma unroll
    for (int c = 0; c < Width; ++c) {
      s[r][c] *= decay;
      partial[c] = fmaf(s[r][c], k_r, partial[c]);
    }
  }
  store_row<Width>(predicted_partial + warp * kTile + tile_column, partial);
  __syncthreads();

  // u = beta (v - S^T k) for the own columns (every warp needs it: each sums the partials).
  float u[Width];
  sum_over_warps<Width>(predicted_partial, warps, kTile, tile_column, u);
#pragma unroll
  for (int c = 0; c < Width; ++c) {
    u[c] = beta_bh * (v_own[c] - u[c]);
    partial[c] = 0.0f;
  }

  // S += k u^T, stored once; partial (S^T q) from the same registers.
#pragma unroll
  for (int r = 0; r < kGdnRowsPerWarp; ++r) {
    if (row0 + r >= dk) break;
    const float k_r = k_shared[row0 + r], q_r = q_shared[row0 + r];
#pragma unroll
    for (int c = 0; c < Width; ++c) {
      s[r][c] = fmaf(k_r, u[c], s[r][c]);
      partial[c] = fmaf(s[r][c], q_r, partial[c]);
    }
    if (owns_columns) store_row<Width>(S + static_cast<int64_t>(row0 + r) * dv + column, s[r]);
  }
  store_row<Width>(output_partial + warp * kTile + tile_column, partial);
  __syncthreads();
  if (warp != 0 || !owns_columns) return;
  float out[Width];
  sum_over_warps<Width>(output_partial, warps, kTile, tile_column, out);
#pragma unroll
  for (int c = 0; c < Width; ++c) o[bh * dv + column + c] = out[c];
}

// ---- Mamba-2 --------------------------------------------------------------------------------
// Rows p of h [P, N] are independent (h_p = e^(delta A) h_p + delta x_p Bm, y_p = h_p . Cm), so
// nothing is kept across phases: a warp streams 8 rows at a time, lanes across N (32 x Width
// consecutive floats per row access: coalesced), the 8 rows' loads issued together (4 rows in
// flight per warp, 512 B per lane group, left the H200 at 73% of HBM at B = 64); y_p is a sum
// over N, done across the lanes with shuffles, plus the skip term D_h x_p where the layer's D is
// given (fp32 or bf16 [H]). CTA = 8 warps = 64 rows of one (b, h). The state
// goes through the cache with the evict-first hint: 75.1 -> 77.8% of 4.8 TB/s at B = 64 on the
// H200 (equal at B = 256), where the same hint left the GDN kernel unchanged or slower.
constexpr int kM2Warps = 8;
constexpr int kM2RowsPerWarp = 8;
constexpr int kM2RowsPerBlock = kM2Warps * kM2RowsPerWarp;

template <int Width>
__global__ void __launch_bounds__(kWarp * kM2Warps)
mamba2_decode_kernel(const float* __restrict__ x, const float* __restrict__ delta,
                     const float* __restrict__ A, const float* __restrict__ Bm,
                     const float* __restrict__ Cm, float* __restrict__ state,
                     float* __restrict__ y, int heads, int p_dim, int n_dim, const float* __restrict__ skip_f32,
                     const __nv_bfloat16* __restrict__ skip_bf16) {
  const int64_t bh = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int row0 = blockIdx.y * kM2RowsPerBlock + warp * kM2RowsPerWarp;
  if (row0 >= p_dim) return;  // the whole warp (no block barrier below)
  float* h = state + bh * p_dim * n_dim;
  // The warp's state rows into L2 while the kernels before finish (a lane per 128-byte line).
  for (int r = 0; r < kM2RowsPerWarp && row0 + r < p_dim; ++r)
    for (int column = lane * 32; column < n_dim; column += kWarp * 32)
      prefetch_l2(h + static_cast<int64_t>(row0 + r) * n_dim + column);
  pdl_wait();  // x, delta, B and C come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  const float dt = delta[bh];
  const float decay = expf(dt * A[bh % heads]);
  const float* B_bh = Bm + bh * n_dim;
  const float* C_bh = Cm + bh * n_dim;

  const int head = bh % heads;
  const float skip = skip_f32 != nullptr    ? skip_f32[head]
                     : skip_bf16 != nullptr ? __bfloat162float(skip_bf16[head])
                                            : 0.0f;
  float xv[kM2RowsPerWarp], dx[kM2RowsPerWarp], acc[kM2RowsPerWarp];
#pragma unroll
  for (int r = 0; r < kM2RowsPerWarp; ++r) {
    xv[r] = row0 + r < p_dim ? x[bh * p_dim + row0 + r] : 0.0f;
    dx[r] = dt * xv[r];
    acc[r] = 0.0f;
  }
  for (int column = lane * Width; column < n_dim; column += kWarp * Width) {
    float hv[kM2RowsPerWarp][Width];
#pragma unroll
    for (int r = 0; r < kM2RowsPerWarp; ++r)
      if (row0 + r < p_dim) load_row_streaming<Width>(h + static_cast<int64_t>(row0 + r) * n_dim + column, hv[r]);
    float b[Width], c_vec[Width];
    load_row<Width>(B_bh + column, b);
    load_row<Width>(C_bh + column, c_vec);
#pragma unroll
    for (int r = 0; r < kM2RowsPerWarp; ++r) {
      if (row0 + r >= p_dim) break;
#pragma unroll
      for (int c = 0; c < Width; ++c) {
        hv[r][c] = fmaf(dx[r], b[c], decay * hv[r][c]);
        acc[r] = fmaf(hv[r][c], c_vec[c], acc[r]);
      }
      store_row_streaming<Width>(h + static_cast<int64_t>(row0 + r) * n_dim + column, hv[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kM2RowsPerWarp; ++r) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2)
      acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kM2RowsPerWarp; ++r)
      if (row0 + r < p_dim) y[bh * p_dim + row0 + r] = acc[r] + skip * xv[r];
  }
}

// ---- launch helpers -------------------------------------------------------------------------

void check_shape(const at::Tensor& tensor, const char* op, const char* name,
                 std::initializer_list<int64_t> sizes) {
  check_operand(tensor, op, name, at::kFloat, static_cast<int64_t>(sizes.size()));
  PRIME_CHECK(tensor.sizes() == at::IntArrayRef(sizes), op, ": ", name, " is ", tensor.sizes(),
              ", expected ", at::IntArrayRef(sizes));
}

void check_dim(int64_t dim, const char* op, const char* name) {
  PRIME_CHECK(dim >= 1 && dim <= kMaxDim, op, ": ", name, " = ", dim, " is not in [1, ", kMaxDim, "]");
}

// Every operand on the state's device; false when there is nothing to launch (B*H == 0), one
// CTA row per (b, h) otherwise.
bool check_device_and_grid(const at::Tensor& state, std::initializer_list<const at::Tensor*> operands,
                           const char* op) {
  for (const at::Tensor* t : operands)
    PRIME_CHECK(t->device() == state.device(), op, ": operands on ", t->device(), " and ", state.device());
  const int64_t batch_heads = state.size(0) * state.size(1);
  PRIME_CHECK(batch_heads <= INT_MAX, op, ": B*H = ", batch_heads, " exceeds the grid");
  return batch_heads > 0;
}

// Width-4 accesses need rows of a multiple of 4 floats starting on 16 bytes.
bool rows_of_float4(const at::Tensor& state, int64_t row_length) {
  return row_length % 4 == 0 && reinterpret_cast<uintptr_t>(state.data_ptr()) % 16 == 0;
}

template <typename V>
V* data(const at::Tensor& tensor) {
  return static_cast<V*>(tensor.data_ptr());
}

}  // namespace

void launch_gdn_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& g, const at::Tensor& beta, const at::Tensor& state,
                       const at::Tensor& o) {
  const char* op = "gdn_decode";
  check_operand(state, op, "state", at::kFloat, 4);
  const int64_t B = state.size(0), H = state.size(1), Dk = state.size(2), Dv = state.size(3);
  check_dim(Dk, op, "Dk");
  check_dim(Dv, op, "Dv");
  check_shape(q, op, "q", {B, H, Dk});
  check_shape(k, op, "k", {B, H, Dk});
  check_shape(v, op, "v", {B, H, Dv});
  check_shape(g, op, "g", {B, H});
  check_shape(beta, op, "beta", {B, H});
  check_shape(o, op, "o", {B, H, Dv});
  if (!check_device_and_grid(state, {&q, &k, &v, &g, &beta, &o}, op)) return;
  const at::cuda::CUDAGuard guard(state.device());
  const int warps = gdn_warps(static_cast<int>(Dk));
  const auto launch = [&](auto width) {
    constexpr int kWidth = decltype(width)::value;
    constexpr int kTile = kWarp * kWidth;
    const dim3 grid(static_cast<unsigned>(B * H), static_cast<unsigned>((Dv + kTile - 1) / kTile));
    const size_t shared_bytes = (2 * warps * kTile + 2 * Dk) * sizeof(float);
    launch_kernel("gdn_decode_kernel", gdn_decode_kernel<kWidth>, grid, warps * kWarp, shared_bytes,
                  at::cuda::getCurrentCUDAStream(), data<const float>(q), data<const float>(k), data<const float>(v),
                  data<const float>(g), data<const float>(beta), data<float>(state), data<float>(o),
                  static_cast<int>(Dk), static_cast<int>(Dv));
  };
  // Float4 rows wherever they align. Scalar rows at small B*H (4x the CTAs, e.g. 128 instead of
  // 32 at B = 1 of the 8B shape) were measured slower on the H200: 9.4 vs 6.7 us per step.
  if (rows_of_float4(state, Dv)) launch(std::integral_constant<int, 4>{});
  else launch(std::integral_constant<int, 1>{});
}

void launch_mamba2_decode(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& state,
                          const at::Tensor& skip, const at::Tensor& y) {
  const char* op = "mamba2_decode";
  check_operand(state, op, "state", at::kFloat, 4);
  const int64_t B = state.size(0), H = state.size(1), P = state.size(2), N = state.size(3);
  check_dim(P, op, "P");
  check_dim(N, op, "N");
  check_shape(x, op, "x", {B, H, P});
  check_shape(delta, op, "delta", {B, H});
  check_shape(A, op, "A", {H});
  check_shape(Bm, op, "Bm", {B, H, N});
  check_shape(Cm, op, "Cm", {B, H, N});
  check_shape(y, op, "y", {B, H, P});
  if (skip.defined()) {
    PRIME_CHECK(skip.is_cuda() && skip.is_contiguous() && skip.sizes() == at::IntArrayRef({H}) &&
                    (skip.scalar_type() == at::kFloat || skip.scalar_type() == at::kBFloat16),
                op, ": skip must be a contiguous [", H, "] fp32 or bf16 CUDA tensor");
    PRIME_CHECK(skip.device() == state.device(), op, ": operands on ", skip.device(), " and ", state.device());
  }
  if (!check_device_and_grid(state, {&x, &delta, &A, &Bm, &Cm, &y}, op)) return;
  const bool skip_f32 = skip.defined() && skip.scalar_type() == at::kFloat;
  const bool skip_bf16 = skip.defined() && skip.scalar_type() == at::kBFloat16;
  const at::cuda::CUDAGuard guard(state.device());
  const dim3 grid(static_cast<unsigned>(B * H),
                  static_cast<unsigned>((P + kM2RowsPerBlock - 1) / kM2RowsPerBlock));
  // Bm and Cm rows take the same width as the state's: both start at bh * N floats.
  const bool wide = rows_of_float4(state, N) && rows_of_float4(Bm, N) && rows_of_float4(Cm, N);
  const auto launch = [&](auto width) {
    launch_kernel("mamba2_decode_kernel", mamba2_decode_kernel<decltype(width)::value>, grid, kWarp * kM2Warps, 0,
                  at::cuda::getCurrentCUDAStream(), data<const float>(x), data<const float>(delta),
                  data<const float>(A), data<const float>(Bm), data<const float>(Cm), data<float>(state),
                  data<float>(y), static_cast<int>(H), static_cast<int>(P), static_cast<int>(N),
                  skip_f32 ? data<const float>(skip) : nullptr,
                  skip_bf16 ? data<const __nv_bfloat16>(skip) : nullptr);
  };
  if (wide) launch(std::integral_constant<int, 4>{});
  else launch(std::integral_constant<int, 1>{});
}

}  // namespace prime::kernels::detail
