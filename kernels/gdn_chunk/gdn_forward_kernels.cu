// CUDA kernels of GDN's fused chunked forward (see gdn_chunk.h, gdn_chunk_forward): the parts of
// gated_delta_rule_chunked that are parallel over chunks, each as one kernel per (chunk, batch
// and head) on 3xTF32 tensor cores (kernels/common/tf32x3_mma.cuh: fp32 accuracy). Between them
// the chunk-state scan of gdn_chunk_kernels.cu walks the chunks.
//  - prep: Gamma (float64), A = strictly-lower(beta K K^T * e^{Gamma_i - Gamma_j}),
//    T = (I + A)^-1 by forward substitution in shared memory, W = T diag(beta e^Gamma) K,
//    U' = T diag(beta) V, K_d = diag(e^{Gamma_end - Gamma}) K, e^{Gamma_end}.
//  - output: O = diag(e^Gamma) Q S_n + (Q K^T * e^{Gamma_i - Gamma_j}, j <= i) U_n, with S_n the
//    state entering the chunk and U_n = U' - W S_n, both from the scan.
// Every exponent is <= 0 (the log decays are), so nothing overflows. Chunks are 64 steps; a
// chunk's rows past T are zeros (no input, no decay), as in the torch form's padding.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/tf32x3_mma.cuh"
#include "kernels/gdn_chunk/gdn_chunk_launch.h"
#include "kernels/gdn_chunk/gdn_forward_common.cuh"

namespace prime::kernels::detail {

namespace {

namespace wmma = nvcuda::wmma;
using tf32x3::FragC;

using gdn_forward::kChunk;
using gdn_forward::kLdC;
using gdn_forward::kThreads;
using gdn_forward::kWarps;

// Shared operands are row-major with a row stride of (width + 4) floats: a multiple of 4 (wmma)
// that is not one of 32, so rows start 32-byte aligned and the fragment loads spread over banks.
__host__ __device__ constexpr int padded(int width) { return width + 4; }

struct ForwardParams {
  const float *q, *k, *v, *g, *beta;  // [B,T,H,D], [B,T,H]; contiguous
  int T, H, D, num_chunks;
  float *w, *u, *k_decayed, *decay;  // prep's outputs: [M,N,64,D] (three), [M,N]
  float* inverse;                    // [M,N,64,64] T = (I + A)^-1, or null (training keeps it)
  const float* states;               // the scan's [M,N,D,D]; u then holds U_n
  float* o;                          // [B,T,H,D]
};

// dst[t][i] (row stride ld) = x[b, t0 + t, h, i] for t < 64, i < D; rows past T are zeros.
__device__ __forceinline__ void load_rows(float* dst, int ld, const float* x, const ForwardParams& p, int b, int t0,
                                          int h) {
  const int D4 = p.D / 4;
  for (int index = threadIdx.x; index < kChunk * D4; index += kThreads) {
    const int t = index / D4, i = (index - t * D4) * 4;
    float4 value = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t0 + t < p.T)
      value = __ldg(reinterpret_cast<const float4*>(x + ((static_cast<size_t>(b) * p.T + t0 + t) * p.H + h) * p.D + i));
    *reinterpret_cast<float4*>(dst + t * ld + i) = value;
  }
}

// out[64][64] (ld kLdC) = X Y^T for X, Y [64][D] in shared memory (ld): warp w computes row block
// w % 4, column blocks 2 (w / 4) and 2 (w / 4) + 1.
__device__ __forceinline__ void gram_64(float* out, const float* x, const float* y, int ld, int depth) {
  const int warp = threadIdx.x / 32, row0 = 16 * (warp % 4), col0 = 32 * (warp / 4);
  FragC acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  tf32x3::warp_gemm<2, wmma::row_major, wmma::col_major>(acc, x + row0 * ld, ld, y, ld, depth, col0);
  for (int t = 0; t < 2; ++t)
    wmma::store_matrix_sync(out + row0 * kLdC + col0 + 16 * t, acc[t], kLdC, wmma::mem_row_major);
}

size_t prep_shared_bytes(int D) {
  return kChunk * sizeof(double) + 2 * kChunk * sizeof(float) +
         (2 * static_cast<size_t>(kChunk) * padded(D) + 2 * kChunk * kLdC) * sizeof(float);
}

template <int NT>
__global__ void __launch_bounds__(kThreads, 2) gdn_forward_prep_kernel(const ForwardParams p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  const int ld = padded(p.D);
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* gates = reinterpret_cast<float*>(gamma + kChunk);   // [64]
  float* beta = gates + kChunk;                              // [64]
  float* ks = beta + kChunk;                                 // [64][ld], 1 KB in: 32-byte aligned
  float* vs = ks + kChunk * ld;                              // [64][ld]
  float* am = vs + kChunk * ld;                              // [64][kLdC]: K K^T, then A
  float* tm = am + kChunk * kLdC;                            // [64][kLdC]: T
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh % p.H, t0 = chunk * kChunk;
  const size_t row0 = (static_cast<size_t>(bh) * p.num_chunks + chunk) * kChunk;  // the chunk's buffer rows
  load_rows(ks, ld, p.k, p, b, t0, h);
  load_rows(vs, ld, p.v, p, b, t0, h);
  gdn_forward::chunk_gates(p.g, p.beta, p.T, p.H, b, h, t0, gamma, gates, beta);  // synchronises

  gram_64(am, ks, ks, ld, p.D);
  __syncthreads();
  // A = strictly-lower(beta_i (k_i . k_j) e^{Gamma_i - Gamma_j}); K_d rows to global.
  for (int index = threadIdx.x; index < kChunk * kChunk; index += kThreads) {
    const int i = index / kChunk, j = index % kChunk;
    am[i * kLdC + j] = j < i ? beta[i] * expf(static_cast<float>(gamma[i] - gamma[j])) * am[i * kLdC + j] : 0.0f;
  }
  const int D4 = p.D / 4;
  for (int index = threadIdx.x; index < kChunk * D4; index += kThreads) {
    const int t = index / D4, i = (index - t * D4) * 4;
    float4 value = *reinterpret_cast<const float4*>(ks + t * ld + i);
    const float f = expf(static_cast<float>(gamma[kChunk - 1] - gamma[t]));
    value.x *= f, value.y *= f, value.z *= f, value.w *= f;
    *reinterpret_cast<float4*>(p.k_decayed + (row0 + t) * p.D + i) = value;
  }
  if (threadIdx.x == 0)
    p.decay[static_cast<size_t>(bh) * p.num_chunks + chunk] = expf(static_cast<float>(gamma[kChunk - 1]));
  __syncthreads();
  // The right-hand sides diag(beta e^Gamma) K and diag(beta) V, in place.
  for (int index = threadIdx.x; index < kChunk * D4; index += kThreads) {
    const int t = index / D4, i = (index - t * D4) * 4;
    const float fk = beta[t] * expf(static_cast<float>(gamma[t])), fv = beta[t];
    float4 kv = *reinterpret_cast<const float4*>(ks + t * ld + i);
    float4 vv = *reinterpret_cast<const float4*>(vs + t * ld + i);
    kv.x *= fk, kv.y *= fk, kv.z *= fk, kv.w *= fk;
    vv.x *= fv, vv.y *= fv, vv.z *= fv, vv.w *= fv;
    *reinterpret_cast<float4*>(ks + t * ld + i) = kv;
    *reinterpret_cast<float4*>(vs + t * ld + i) = vv;
  }
  gdn_forward::unit_lower_inverse_64(am, tm);  // T; ends with a barrier
  if (p.inverse != nullptr) {
    float* out = p.inverse + (static_cast<size_t>(bh) * p.num_chunks + chunk) * kChunk * kChunk;
    for (int index = threadIdx.x; index < kChunk * kChunk / 4; index += kThreads) {
      const int row = index / (kChunk / 4), col = (index % (kChunk / 4)) * 4;
      *reinterpret_cast<float4*>(out + row * kChunk + col) = *reinterpret_cast<const float4*>(tm + row * kLdC + col);
    }
  }
  // W = T diag(beta e^Gamma) K and U' = T diag(beta) V, straight to global memory. Tasks are
  // (matrix, 16 NT-column group, 16-row block r); T's row block r has columns < 16 (r + 1) only.
  // A warp's tasks alternate between row blocks r and 3 - r, so the warps' depths balance.
  const int groups = p.D / (16 * NT), tasks = 2 * groups * 4;
  for (int task = threadIdx.x / 32; task < tasks; task += kWarps) {
    const int r_base = task % 4, matrix = (task / 4) % 2, group = task / 8;
    const int r = group % 2 == 0 ? r_base : 3 - r_base, col0 = group * 16 * NT;
    FragC acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) wmma::fill_fragment(acc[t], 0.0f);
    tf32x3::warp_gemm<NT, wmma::row_major, wmma::row_major>(acc, tm + 16 * r * kLdC, kLdC, matrix == 0 ? ks : vs, ld,
                                                            16 * (r + 1), col0);
    float* out = (matrix == 0 ? p.w : p.u) + (row0 + 16 * r) * p.D + col0;
#pragma unroll
    for (int t = 0; t < NT; ++t) wmma::store_matrix_sync(out + 16 * t, acc[t], p.D, wmma::mem_row_major);
  }
}

size_t output_shared_bytes(int D) {
  return kChunk * sizeof(double) + 2 * kChunk * sizeof(float) +
         (2 * static_cast<size_t>(kChunk) * padded(D) + kChunk * kLdC) * sizeof(float);
}

template <int NT>
__global__ void __launch_bounds__(kThreads, 2) gdn_forward_output_kernel(const ForwardParams p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  const int ld = padded(p.D);
  double* gamma = reinterpret_cast<double*>(shared_bytes);  // [64]
  float* gates = reinterpret_cast<float*>(gamma + kChunk);   // [64]
  float* qs = gates + 2 * kChunk;                            // [64][ld]: Q, then diag(e^Gamma) Q
  float* ks = qs + kChunk * ld;                              // [64][ld]: K, then O
  float* sc = ks + kChunk * ld;                              // [64][kLdC]: the decayed scores
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh % p.H, t0 = chunk * kChunk;
  const size_t chunk_index = static_cast<size_t>(bh) * p.num_chunks + chunk;
  load_rows(qs, ld, p.q, p, b, t0, h);
  load_rows(ks, ld, p.k, p, b, t0, h);
  gdn_forward::chunk_gates(p.g, nullptr, p.T, p.H, b, h, t0, gamma, gates, nullptr);  // synchronises

  gram_64(sc, qs, ks, ld, p.D);
  __syncthreads();
  for (int index = threadIdx.x; index < kChunk * kChunk; index += kThreads) {
    const int i = index / kChunk, j = index % kChunk;
    sc[i * kLdC + j] = j <= i ? expf(static_cast<float>(gamma[i] - gamma[j])) * sc[i * kLdC + j] : 0.0f;
  }
  const int D4 = p.D / 4;
  for (int index = threadIdx.x; index < kChunk * D4; index += kThreads) {
    const int t = index / D4, i = (index - t * D4) * 4;
    const float f = expf(static_cast<float>(gamma[t]));
    float4 value = *reinterpret_cast<const float4*>(qs + t * ld + i);
    value.x *= f, value.y *= f, value.z *= f, value.w *= f;
    *reinterpret_cast<float4*>(qs + t * ld + i) = value;
  }
  __syncthreads();
  // O tiles (16-row block r, 16 NT columns): diag(e^Gamma) Q S_n + scores U_n, the scores' row
  // block r having columns < 16 (r + 1) only. S_n and U_n are read from global memory.
  const float* state = p.states + chunk_index * p.D * p.D;
  const float* u = p.u + chunk_index * kChunk * p.D;
  const int groups = p.D / (16 * NT), tasks = 4 * groups;
  for (int task = threadIdx.x / 32; task < tasks; task += kWarps) {
    const int r = task % 4, col0 = (task / 4) * 16 * NT;
    FragC acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) wmma::fill_fragment(acc[t], 0.0f);
    tf32x3::warp_gemm<NT, wmma::row_major, wmma::row_major>(acc, qs + 16 * r * ld, ld, state, p.D, p.D, col0);
    tf32x3::warp_gemm<NT, wmma::row_major, wmma::row_major>(acc, sc + 16 * r * kLdC, kLdC, u, p.D, 16 * (r + 1),
                                                            col0);
#pragma unroll
    for (int t = 0; t < NT; ++t)
      wmma::store_matrix_sync(ks + 16 * r * ld + col0 + 16 * t, acc[t], ld, wmma::mem_row_major);
  }
  __syncthreads();
  for (int index = threadIdx.x; index < kChunk * D4; index += kThreads) {
    const int t = index / D4, i = (index - t * D4) * 4;
    if (t0 + t < p.T)
      *reinterpret_cast<float4*>(p.o + ((static_cast<size_t>(b) * p.T + t0 + t) * p.H + h) * p.D + i) =
          *reinterpret_cast<const float4*>(ks + t * ld + i);
  }
}

// Column-tile width: 64 columns per warp task, 32 for D = 32.
template <typename Launch>
void with_tiles(int64_t D, Launch launch) {
  if (D == 32)
    launch(std::integral_constant<int, 2>{});
  else
    launch(std::integral_constant<int, 4>{});
}

void check_time_major(const at::Tensor& tensor, const char* op, const char* name, const at::Tensor& like) {
  check_operand(tensor, op, name, at::kFloat, like.dim());
  PRIME_CHECK(tensor.sizes() == like.sizes(), op, ": ", name, " ", tensor.sizes(), " vs ", like.sizes());
}

ForwardParams params_of(const at::Tensor& q, const at::Tensor& g, const char* op) {
  check_operand(q, op, "q", at::kFloat, 4);
  check_operand(g, op, "g", at::kFloat, 3);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3);
  PRIME_CHECK(g.size(0) == B && g.size(1) == T && g.size(2) == H, op, ": g ", g.sizes(), " vs q ", q.sizes());
  PRIME_CHECK(D == 32 || D == 64 || D == 128 || D == 256, op, ": head dim ", D, " is not 32, 64, 128 or 256");
  PRIME_CHECK(B * H <= 65535, op, ": batch * heads must be <= 65535");
  ForwardParams p{};
  p.q = q.data_ptr<float>();
  p.g = g.data_ptr<float>();
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.D = static_cast<int>(D);
  p.num_chunks = static_cast<int>((T + kChunk - 1) / kChunk);
  return p;
}

void check_chunk_buffer(const at::Tensor& tensor, const char* op, const char* name, int64_t M, int64_t N,
                        int64_t rows, int64_t D) {
  check_operand(tensor, op, name, at::kFloat, 4);
  PRIME_CHECK(tensor.size(0) == M && tensor.size(1) == N && tensor.size(2) == rows && tensor.size(3) == D, op, ": ",
              name, " ", tensor.sizes());
}

}  // namespace

bool gdn_forward_fits_device(int64_t head_dim, int device) {
  const int D = static_cast<int>(head_dim);
  return std::max(prep_shared_bytes(D), output_shared_bytes(D)) <=
         at::cuda::getDeviceProperties(device)->sharedMemPerBlockOptin;
}

void launch_gdn_forward_prep(const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
                             const at::Tensor& w, const at::Tensor& u, const at::Tensor& k_decayed,
                             const at::Tensor& decay, const at::Tensor& inverse) {
  const char* op = "gdn_forward_prep";
  ForwardParams p = params_of(k, g, op);
  check_time_major(v, op, "v", k);
  check_time_major(beta, op, "beta", g);
  const int64_t M = k.size(0) * k.size(2), N = p.num_chunks, D = k.size(3);
  check_chunk_buffer(w, op, "w", M, N, kChunk, D);
  check_chunk_buffer(u, op, "u", M, N, kChunk, D);
  check_chunk_buffer(k_decayed, op, "k_decayed", M, N, kChunk, D);
  check_operand(decay, op, "decay", at::kFloat, 2);
  PRIME_CHECK(decay.size(0) == M && decay.size(1) == N, op, ": decay ", decay.sizes());
  if (inverse.defined()) check_chunk_buffer(inverse, op, "inverse", M, N, kChunk, kChunk);
  if (M == 0 || N == 0) return;
  p.inverse = inverse.defined() ? inverse.data_ptr<float>() : nullptr;
  p.k = k.data_ptr<float>();
  p.v = v.data_ptr<float>();
  p.beta = beta.data_ptr<float>();
  p.w = w.data_ptr<float>();
  p.u = u.data_ptr<float>();
  p.k_decayed = k_decayed.data_ptr<float>();
  p.decay = decay.data_ptr<float>();
  const at::cuda::CUDAGuard guard(k.device());
  const size_t shared = prep_shared_bytes(p.D);
  with_tiles(D, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    PRIME_CUDA_CHECK(cudaFuncSetAttribute(gdn_forward_prep_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared)));
    gdn_forward_prep_kernel<NT><<<dim3(static_cast<unsigned>(N), static_cast<unsigned>(M)), kThreads, shared,
                                  at::cuda::getCurrentCUDAStream()>>>(p);
    PRIME_CUDA_CHECK_LAUNCH("gdn_forward_prep_kernel");
  });
}

void launch_gdn_forward_output(const at::Tensor& q, const at::Tensor& k, const at::Tensor& g, const at::Tensor& u,
                               const at::Tensor& states, const at::Tensor& o) {
  const char* op = "gdn_forward_output";
  ForwardParams p = params_of(q, g, op);
  check_time_major(k, op, "k", q);
  check_time_major(o, op, "o", q);
  const int64_t M = q.size(0) * q.size(2), N = p.num_chunks, D = q.size(3);
  check_chunk_buffer(u, op, "u", M, N, kChunk, D);
  check_chunk_buffer(states, op, "states", M, N, D, D);
  if (M == 0 || N == 0) return;
  p.k = k.data_ptr<float>();
  p.u = const_cast<float*>(u.data_ptr<float>());
  p.states = states.data_ptr<float>();
  p.o = o.data_ptr<float>();
  const at::cuda::CUDAGuard guard(q.device());
  const size_t shared = output_shared_bytes(p.D);
  with_tiles(D, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    PRIME_CUDA_CHECK(cudaFuncSetAttribute(gdn_forward_output_kernel<NT>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
    gdn_forward_output_kernel<NT><<<dim3(static_cast<unsigned>(N), static_cast<unsigned>(M)), kThreads, shared,
                                    at::cuda::getCurrentCUDAStream()>>>(p);
    PRIME_CUDA_CHECK_LAUNCH("gdn_forward_output_kernel");
  });
}

}  // namespace prime::kernels::detail
