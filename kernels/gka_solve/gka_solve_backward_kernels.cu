// CUDA kernel of the reverse sweep of GKA's chunked Chebyshev solve: the backward of
// model::gka_detail::chunk_solve (lib/model/gka_solve.cpp states the math), one block per chunk,
// all N iterations on chip as the forward kernel does. Per iteration i = N..1, with A the
// complete adjoint of y_{i+1}, s = -omega_i eta (per row) and U_i = s A:
//   UK = s (A K^T), YK = y_i K^T                        [C, C]  (tensor cores)
//   dW += UK o YK;  P1 = W o UK;  P2 = s (W o YK)
//   dK += P2^T A + P1^T y_i;  dH_0 += y_i^T (e s A)       (tensor cores, accumulated in the outputs)
//   UH0 = s (A H_0);  HU = e UH0 + P1 K                   (tensor cores)
//   d e += rowsum(UH0 o y_i);  hy += rowsum(HU o y_i)
//   q_coeff += omega A;  A <- HU + kappa omega A + (1 - omega_{i+1}) A_{i+2}
// then q_coeff += A (the adjoint of y_1 = eta q), dq = eta q_coeff and
// d f = (rowsum(q_coeff o q) + hy / eta) (-eta / f).
//
// Shared memory holds K, H_0, A, y_i (later HU in its place), P1, P2 (also the warps' staging
// tiles) and the row factors: 217 KB at C = 64, D = 128. The momentum term (1 - omega) A_{i+2}
// and q_coeff are kept in registers (a warp owns rows, a lane columns); dK, dH_0 and dW are
// accumulated in their outputs (the block's own slices, resident in L2). No atomics: every sum
// runs in a fixed order, so the gradients are deterministic.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/switches.h"
#include "kernels/gka_solve/gka_mma.cuh"
#include "kernels/gka_solve/gka_solve_launch.h"

namespace prime::kernels::detail {

namespace {

using namespace gka;

constexpr int kRowsPerWarp = kMaxChunk / kWarps;  // row-per-warp passes: rows warp + kWarps a
constexpr int kColsPerLane = kMaxDim / 32;        // columns lane + 32 b
constexpr int kStageLd = 16 + kPad;               // a warp's 16 x 16 staging tile
constexpr int kMaxColTiles = kMaxDim / 16;        // row partial sums per 16-column tile

__host__ __device__ inline int round_up8(int n) { return (n + 7) / 8 * 8; }

// Shared-memory layout in floats; every buffer starts 32-byte aligned (Cp and D multiples of 16).
struct BackwardLayout {
  int ld_x, ld_p;  // row strides of the [Cp, D] and [Cp, Cp] buffers
  int k, a, y, h, p1, p2, es, rows, parts, omegas, floats;

  __host__ __device__ BackwardLayout(int padded_chunk, int d, int num_iter) {
    ld_x = d + kPad;
    ld_p = padded_chunk + kPad;
    k = 0;
    a = k + padded_chunk * ld_x;  // the adjoint A
    y = a + padded_chunk * ld_x;  // y_i, then HU
    h = y + padded_chunk * ld_x;
    p1 = h + d * ld_x;
    p2 = p1 + padded_chunk * ld_p;  // P2, and the staging tiles of the HU pass
    const int p2_floats = padded_chunk * ld_p > kWarps * 16 * kStageLd ? padded_chunk * ld_p : kWarps * 16 * kStageLd;
    es = p2 + round_up8(p2_floats);  // [Cp, 16]: row t repeats e_t s_t (a B-fragment scale)
    rows = es + padded_chunk * 16;   // eta, kappa, e, d e, hy
    parts = rows + 5 * padded_chunk;  // [Cp, kMaxColTiles] partial sums of d e and of hy
    omegas = parts + 2 * padded_chunk * kMaxColTiles;  // num_iter doubles
    floats = omegas + 2 * num_iter;
  }
};

// dK (+)= P2^T A + P1^T Y and dH_0 (+)= Y^T (ES o A), tasks of NT 16-column tiles spread over
// the warps; the outputs are the block's slices in global memory, read back when accumulating.
template <int NT>
__device__ void key_and_start_gradients(float* g_keys, float* g_start, bool accumulate, const float* P1,
                                        const float* P2, int ld_p, const float* Adj, const float* Y, int ld_x,
                                        const float* ES, int padded_chunk, int dim) {
  const int warp = threadIdx.x / 32;
  const int groups = dim / (16 * NT);
  const int key_tasks = (padded_chunk / 16) * groups;
  const int tasks = key_tasks + (dim / 16) * groups;
  for (int task = warp; task < tasks; task += kWarps) {
    const bool keys = task < key_tasks;
    const int index = keys ? task : task - key_tasks;
    const int row0 = (index / groups) * 16, col0 = (index % groups) * 16 * NT;
    float* out = (keys ? g_keys : g_start) + row0 * dim + col0;
    FragC acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (accumulate)
        wmma::load_matrix_sync(acc[t], out + 16 * t, dim, wmma::mem_row_major);
      else
        wmma::fill_fragment(acc[t], 0.0f);
    }
    if (keys) {
      // Rows of dK are key positions s: P^T's row s is P's column s.
      warp_gemm<NT, wmma::col_major, wmma::row_major, true>(acc, P2 + row0, ld_p, Adj, ld_x, padded_chunk, col0);
      warp_gemm<NT, wmma::col_major, wmma::row_major, true>(acc, P1 + row0, ld_p, Y, ld_x, padded_chunk, col0);
    } else {
      warp_gemm<NT, wmma::col_major, wmma::row_major, true>(acc, Y + row0, ld_x, Adj, ld_x, padded_chunk, col0, ES);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) wmma::store_matrix_sync(out + 16 * t, acc[t], dim, wmma::mem_row_major);
  }
}

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__global__ void __launch_bounds__(kThreads, 1)
    gka_chunk_solve_backward_kernel(const float* __restrict__ q, const float* __restrict__ keys,
                                    const float* __restrict__ start, const float* __restrict__ weights,
                                    const float* __restrict__ from_start, const float* __restrict__ frob,
                                    const float* __restrict__ iterates, const float* __restrict__ grad,
                                    float* __restrict__ d_q, float* __restrict__ d_keys,
                                    float* __restrict__ d_start, float* __restrict__ d_weights,
                                    float* __restrict__ d_from_start, float* __restrict__ d_frob, int chunk,
                                    int dim, int padded_chunk, double ridge_strength, int num_iter,
                                    long long chunks) {
  extern __shared__ __align__(128) float smem[];
  const int Cp = padded_chunk;
  const BackwardLayout L(Cp, dim, num_iter);
  const int ld_x = L.ld_x, ld_p = L.ld_p;
  float* K = smem + L.k;
  float* Adj = smem + L.a;
  float* Y = smem + L.y;
  float* H0 = smem + L.h;
  float* P1 = smem + L.p1;
  float* P2 = smem + L.p2;
  float* ES = smem + L.es;
  float* eta = smem + L.rows;
  float* kappa = eta + Cp;       // 1 - eta lambda
  float* decay = kappa + Cp;     // e^{G_t}
  float* g_decay = decay + Cp;   // d e^{G_t}
  float* hy = g_decay + Cp;      // sum of (H U_i) . y_i
  float* part_decay = smem + L.parts;
  float* part_hy = part_decay + Cp * kMaxColTiles;
  double* omegas = reinterpret_cast<double*>(smem + L.omegas);
  const long long m = blockIdx.x;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const size_t cd = static_cast<size_t>(chunk) * dim;

  load_row_factors(eta, kappa, decay, frob + m * chunk, from_start + m * chunk, chunk, Cp, ridge_strength);
  for (int t = tid; t < Cp; t += kThreads) {
    g_decay[t] = 0.0f;
    hy[t] = 0.0f;
  }
  if (tid == 0) {  // omega_1..omega_N, as ChunkSolve::backward computes them (double)
    ChebyshevOmegas sequence(ridge_strength);
    for (int k = 0; k < num_iter; ++k) omegas[k] = sequence.next();
  }
  load_rows(H0, ld_x, start + m * dim * dim, dim, dim, dim);
  load_rows(K, ld_x, keys + m * cd, Cp, chunk, dim);
  load_rows(Adj, ld_x, grad + m * cd, Cp, chunk, dim);  // the adjoint of y_{N+1}, the output
  load_rows(Y, ld_x, iterates + (static_cast<size_t>(num_iter - 1) * chunks + m) * cd, Cp, chunk, dim);

  // Row-per-warp ownership (rows warp + kWarps a, columns lane + 32 b): the momentum term
  // (1 - omega_{i+1}) A_{i+2} flowing to y_i, and q_coeff.
  float carry[kRowsPerWarp][kColsPerLane], q_coeff[kRowsPerWarp][kColsPerLane];
#pragma unroll
  for (int a = 0; a < kRowsPerWarp; ++a) {
#pragma unroll
    for (int b = 0; b < kColsPerLane; ++b) carry[a][b] = q_coeff[a][b] = 0.0f;
  }
  const Owned by_p(Cp);
  const float* W = weights + m * chunk * chunk;
  float* g_weights = d_weights + m * chunk * chunk;
  float* g_keys = d_keys + m * Cp * dim;  // [Cp, D]: padding rows included (they come out zero)
  float* g_start = d_start + m * dim * dim;
  const int col_tiles = dim / 16;
  __syncthreads();

  for (int i = num_iter; i >= 1; --i) {
    const double omega = omegas[i - 1];
    const float omega_f = static_cast<float>(omega), minus_omega = static_cast<float>(-omega);
    const bool accumulate = i != num_iter;
    // P1 = A K^T, P2 = y_i K^T.
    block_gemm_any<wmma::col_major, true>(P1, ld_p, false, Adj, ld_x, K, ld_x, Cp, Cp, dim);
    block_gemm_any<wmma::col_major, true>(P2, ld_p, false, Y, ld_x, K, ld_x, Cp, Cp, dim);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kMaxChunk * kMaxChunk / kThreads; ++j) {
      if (tid + j * kThreads < Cp * Cp) {
        const int t = by_p.row(j), s = by_p.column(j), at = t * ld_p + s;
        if (t < chunk && s < chunk) {
          const float scale = eta[t] * minus_omega;
          const float uk = P1[at] * scale, yk = P2[at], w = __ldg(W + t * chunk + s);
          const float gw = uk * yk;
          g_weights[t * chunk + s] = accumulate ? g_weights[t * chunk + s] + gw : gw;
          P1[at] = w * uk;
          P2[at] = scale * (w * yk);
        } else {
          P1[at] = 0.0f;
          P2[at] = 0.0f;
        }
      }
    }
    for (int index = tid; index < Cp * 16; index += kThreads) {
      const int t = index / 16;
      ES[index] = decay[t] * (eta[t] * minus_omega);
    }
    __syncthreads();
    if (dim % 32 == 0)
      key_and_start_gradients<2>(g_keys, g_start, accumulate, P1, P2, ld_p, Adj, Y, ld_x, ES, Cp, dim);
    else
      key_and_start_gradients<1>(g_keys, g_start, accumulate, P1, P2, ld_p, Adj, Y, ld_x, ES, Cp, dim);
    __syncthreads();
    // HU = e s (A H_0) + P1 K, one 16 x 16 tile per task, through the warp's staging tile (in
    // P2's place: P2 is done) for the row factors and the row sums; HU replaces y_i in Y.
    float* stage = P2 + warp * 16 * kStageLd;
    for (int task = warp; task < (Cp / 16) * col_tiles; task += kWarps) {
      const int row0 = (task / col_tiles) * 16, tile = task % col_tiles, col0 = tile * 16;
      const int r = lane & 15, c0 = (lane >> 4) * 8, t = row0 + r;
      FragC acc[1];
      wmma::fill_fragment(acc[0], 0.0f);
      warp_gemm<1, wmma::row_major, wmma::row_major, true>(acc, Adj + row0 * ld_x, ld_x, H0, ld_x, dim, col0);
      wmma::store_matrix_sync(stage, acc[0], kStageLd, wmma::mem_row_major);
      __syncwarp();
      const float scale = eta[t] * minus_omega, e = decay[t];
      float part = 0.0f;
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const float uh0 = stage[r * kStageLd + c0 + c] * scale;
        part += uh0 * Y[t * ld_x + col0 + c0 + c];
        stage[r * kStageLd + c0 + c] = e * uh0;
      }
      part += __shfl_xor_sync(0xffffffffu, part, 16);
      if (lane < 16) part_decay[t * kMaxColTiles + tile] = part;
      __syncwarp();
      wmma::load_matrix_sync(acc[0], stage, kStageLd, wmma::mem_row_major);
      warp_gemm<1, wmma::row_major, wmma::row_major, true>(acc, P1 + row0 * ld_p, ld_p, K, ld_x, Cp, col0);
      __syncwarp();
      wmma::store_matrix_sync(stage, acc[0], kStageLd, wmma::mem_row_major);
      __syncwarp();
      part = 0.0f;
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const float hu = stage[r * kStageLd + c0 + c];
        float& y = Y[t * ld_x + col0 + c0 + c];
        part += hu * y;
        y = hu;
      }
      part += __shfl_xor_sync(0xffffffffu, part, 16);
      if (lane < 16) part_hy[t * kMaxColTiles + tile] = part;
      __syncwarp();
    }
    __syncthreads();
    if (tid < Cp) {  // the rows' sums, in a fixed order
      float sum_decay = 0.0f, sum_hy = 0.0f;
      for (int tile = 0; tile < col_tiles; ++tile) {
        sum_decay += part_decay[tid * kMaxColTiles + tile];
        sum_hy += part_hy[tid * kMaxColTiles + tile];
      }
      g_decay[tid] += sum_decay;
      hy[tid] += sum_hy;
    }
    // The adjoints: A_i = HU + kappa omega_i A_{i+1} + (1 - omega_{i+1}) A_{i+2}; the next y.
    const float* y_next = i >= 2 ? iterates + (static_cast<size_t>(i - 2) * chunks + m) * cd : nullptr;
    const float one_minus_omega = static_cast<float>(1.0 - omega);
#pragma unroll
    for (int a = 0; a < kRowsPerWarp; ++a) {
      const int t = warp + kWarps * a;
      if (t >= Cp) continue;
      const float kappa_omega = kappa[t] * omega_f;
#pragma unroll
      for (int b = 0; b < kColsPerLane; ++b) {
        const int d = lane + 32 * b, at = t * ld_x + d;
        if (d >= dim) continue;
        const float adjoint = Adj[at];
        q_coeff[a][b] += adjoint * omega_f;
        Adj[at] = carry[a][b] + (Y[at] + kappa_omega * adjoint);
        carry[a][b] = adjoint * one_minus_omega;
        if (y_next) Y[at] = t < chunk ? __ldg(y_next + t * dim + d) : 0.0f;
      }
    }
    __syncthreads();
  }

  // Adj is now the adjoint of y_1 = eta q.
  const float* q_chunk = q + m * cd;
#pragma unroll
  for (int a = 0; a < kRowsPerWarp; ++a) {
    const int t = warp + kWarps * a;
    if (t >= chunk) continue;  // warp-uniform: the shuffles below see every lane
    float part = 0.0f;
#pragma unroll
    for (int b = 0; b < kColsPerLane; ++b) {
      const int d = lane + 32 * b;
      if (d >= dim) continue;
      const float coeff = q_coeff[a][b] + Adj[t * ld_x + d];
      part += coeff * q_chunk[t * dim + d];
      d_q[m * cd + t * dim + d] = eta[t] * coeff;
    }
    part = warp_sum(part);
    if (lane == 0) {
      const float d_eta = part + hy[t] / eta[t];
      d_frob[m * chunk + t] = d_eta * (-eta[t] / frob[m * chunk + t]);
      d_from_start[m * chunk + t] = g_decay[t];
    }
  }
}

size_t shared_bytes(int64_t C, int64_t D, int64_t num_iter) {
  const BackwardLayout layout(static_cast<int>((C + 15) / 16 * 16), static_cast<int>(D), static_cast<int>(num_iter));
  return static_cast<size_t>(layout.floats) * sizeof(float);
}

// Whether this sweep runs on the mma kernel (gka_solve_launch.h).
bool use_mma_kernel(int64_t C, int64_t D) {
  return gka_chunk_solve_backward_mma_serves(C, D) &&
         !environment_switch<bool>("PRIME_GKA_BACKWARD_WMMA", {{"0", false, "the mma kernel where it serves"},
                                                               {"1", true, "the wmma kernel"}});
}

size_t chosen_shared_bytes(int64_t C, int64_t D, int64_t num_iter) {
  return use_mma_kernel(C, D) ? gka_chunk_solve_backward_mma_shared_bytes(C, D, num_iter)
                              : shared_bytes(C, D, num_iter);
}

}  // namespace

bool gka_chunk_solve_backward_fits(const at::Device& device, int64_t C, int64_t D, int64_t num_iter) {
  const cudaDeviceProp* properties = at::cuda::getDeviceProperties(device.index());
  return num_iter >= 1 && num_iter <= (1 << 20) &&
         chosen_shared_bytes(C, D, num_iter) <= properties->sharedMemPerBlockOptin;
}

void launch_gka_chunk_solve_backward(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                     const at::Tensor& weights, const at::Tensor& from_start,
                                     const at::Tensor& frob, double ridge_strength, int num_iter,
                                     const at::Tensor& iterates, const at::Tensor& grad,
                                     const GkaSolveGradients& out, SolveProducts products) {
  const char* op = "gka_chunk_solve_backward";
  check_operand(q, op, "q", at::kFloat, 3);
  const int64_t M = q.size(0), C = q.size(1), D = q.size(2);
  PRIME_CHECK(C >= 1 && C <= kMaxChunk && D % 16 == 0 && D >= 16 && D <= kMaxDim, op,
              ": q must be [M, C, D] with C <= ", kMaxChunk, " and D a multiple of 16 up to ",
              kMaxDim, ", got ", q.sizes());
  const int64_t Cp = (C + 15) / 16 * 16;
  check_operand(keys, op, "keys", at::kFloat, 3);
  check_operand(start, op, "start", at::kFloat, 3);
  check_operand(weights, op, "weights", at::kFloat, 3);
  check_operand(from_start, op, "from_start", at::kFloat, 2);
  check_operand(frob, op, "frob", at::kFloat, 2);
  check_operand(iterates, op, "iterates", at::kFloat, 4);
  check_operand(grad, op, "grad", at::kFloat, 3);
  check_operand(out.q, op, "d_q", at::kFloat, 3);
  check_operand(out.keys, op, "d_keys", at::kFloat, 3);
  check_operand(out.start, op, "d_start", at::kFloat, 3);
  check_operand(out.weights, op, "d_weights", at::kFloat, 3);
  check_operand(out.from_start, op, "d_from_start", at::kFloat, 2);
  check_operand(out.frob, op, "d_frob", at::kFloat, 2);
  PRIME_CHECK(num_iter >= 1, op, ": num_iter ", num_iter);
  PRIME_CHECK(keys.sizes() == q.sizes() && grad.sizes() == q.sizes() && out.q.sizes() == q.sizes(), op,
              ": keys ", keys.sizes(), ", grad ", grad.sizes(), ", d_q ", out.q.sizes(), " vs q ", q.sizes());
  PRIME_CHECK(start.sizes() == at::IntArrayRef({M, D, D}) && out.start.sizes() == start.sizes(), op, ": start ",
              start.sizes(), ", d_start ", out.start.sizes());
  PRIME_CHECK(weights.sizes() == at::IntArrayRef({M, C, C}) && out.weights.sizes() == weights.sizes(), op,
              ": weights ", weights.sizes(), ", d_weights ", out.weights.sizes());
  PRIME_CHECK(from_start.sizes() == at::IntArrayRef({M, C}) && frob.sizes() == from_start.sizes() &&
                  out.from_start.sizes() == from_start.sizes() && out.frob.sizes() == from_start.sizes(),
              op, ": from_start ", from_start.sizes(), ", frob ", frob.sizes(), ", d_from_start ",
              out.from_start.sizes(), ", d_frob ", out.frob.sizes());
  PRIME_CHECK(iterates.sizes() == at::IntArrayRef({num_iter, M, C, D}), op, ": iterates ", iterates.sizes());
  PRIME_CHECK(out.keys.sizes() == at::IntArrayRef({M, Cp, D}), op, ": d_keys ", out.keys.sizes(),
              " (rows padded to a multiple of 16)");
  for (const at::Tensor* t : {&keys, &start, &weights, &from_start, &frob, &iterates, &grad, &out.q, &out.keys,
                              &out.start, &out.weights, &out.from_start, &out.frob})
    PRIME_CHECK(t->device() == q.device(), op, ": operands on ", t->device(), " and ", q.device());
  if (M == 0) return;
  const size_t bytes = chosen_shared_bytes(C, D, num_iter);
  PRIME_CHECK(gka_chunk_solve_backward_fits(q.device(), C, D, num_iter), op, ": ", bytes,
              " bytes of shared memory for C = ", C, ", D = ", D, ", N = ", num_iter, " exceed the device's limit");
  const at::cuda::CUDAGuard guard(q.device());
  if (use_mma_kernel(C, D)) {
    launch_gka_chunk_solve_backward_mma(q, keys, start, weights, from_start, frob, ridge_strength, num_iter, iterates,
                                        grad, out, products == SolveProducts::Bf16x3);
    return;
  }
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(gka_chunk_solve_backward_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  gka_chunk_solve_backward_kernel<<<static_cast<unsigned>(M), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<float>(), keys.data_ptr<float>(), start.data_ptr<float>(), weights.data_ptr<float>(),
      from_start.data_ptr<float>(), frob.data_ptr<float>(), iterates.data_ptr<float>(), grad.data_ptr<float>(),
      out.q.data_ptr<float>(), out.keys.data_ptr<float>(), out.start.data_ptr<float>(),
      out.weights.data_ptr<float>(), out.from_start.data_ptr<float>(), out.frob.data_ptr<float>(),
      static_cast<int>(C), static_cast<int>(D), static_cast<int>(Cp), ridge_strength, num_iter,
      static_cast<long long>(M));
  PRIME_CUDA_CHECK_LAUNCH("gka_chunk_solve_backward_kernel");
}

}  // namespace prime::kernels::detail
