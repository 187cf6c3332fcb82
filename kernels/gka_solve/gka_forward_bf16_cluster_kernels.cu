// GKA's bf16 forward's per-chunk kernel with the solve split over a cluster of two blocks
// (PRIME_GKA_FORWARD_ITERATE=cluster, D = 128, sm_90a): gka_solve_bf16_wgmma.cuh's warpgroup solve
// with its two warpgroups in two blocks of one warpgroup each, block c of the cluster holding columns
// 64 c .. 64 c + 63 of the iterate. The one-block form (gka_forward_bf16_kernels.cu) takes 256 threads
// at 255 registers and 184 KB of shared memory: one chunk per SM, its two groups meeting at two
// barriers per iteration, so neither's update, split and exchange runs beside the other's MMAs. Here
// a block takes 128 threads and ~106 KB, two blocks share an SM, and blocks of different chunks do not
// wait for each other.
//
// Each block runs the whole prologue (the one-block form's parts, the same operations in the same
// order: the same ||H_t||_F and W), its group's solve, then the epilogue for its 64 columns of o:
// both blocks store their q~ columns into both blocks' shared memory, each forms the whole chunk
// matrix, then its columns of o = e^{G} o (q~ S_0) + P V from S_0^T's and V's columns it needs. The
// operations and their order are the one-block form's: o is that form's bit for bit.
//
// Shared memory (bytes from a 1024-byte aligned base, D = 128), by phase:
//   always:   [106496, 107776) gamma (float64), e^{G}, ||H_t||_F, the gamma scan's scratch;
//   prologue: K [64][136] and H_0 [128][136] bf16 at 0 and 17408, the squared gram at 52224, khk at
//             68864, ||H_0||^2's parts at 69888, W at 69952 (fp32 [64][65]);
//   solve:    K[:, c] [64, 64] and H_0[:, c] [128, 64] swizzled at 0 and 8192, eta q at 24576, X_sw two
//             buffers at 40960, the exchange two buffers at 73728 (the peer writes these two from the
//             cluster barrier before the first iteration on: nothing of this block's is read there by
//             then);
//   epilogue: q~ split (hi, lo) [64][136] at 0, K at 34816, S_0^T's rows of this block's columns
//             [64][136] at 52224, the chunk matrix [64][72] at 69632, V's columns [64][72] at 78848, W at
//             88064 (the peer writes q~ from the cluster barrier after the solve on).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/cluster.cuh"
#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/gka_solve/gka_forward_bf16_parts.cuh"
#include "kernels/gka_solve/gka_solve_bf16_wgmma.cuh"
#include "kernels/ssd_chunk/ssd_chunk_common.cuh"

namespace prime::kernels::detail {

namespace {

using namespace gka_bf16;
using namespace gka_forward;

constexpr int kD = 128, kColumns = 64, kBlockThreads = 128, kBlockWarps = kBlockThreads / 32;
constexpr int kLdD = ld_of(kD), kLdC = ld_of(kColumns);

// The phases' arrays (see above).
constexpr uint32_t kPersistentAt = 106496, kEnd = kPersistentAt + kChunk * 8 + 3 * kChunk * 4;
constexpr uint32_t kKeysAt = 0, kStateAt = kKeysAt + kChunk * kLdD * 2, kGramAt = kStateAt + kD * kLdD * 2;
constexpr uint32_t kKhkAt = kGramAt + kChunk * kLdW * 4, kPartsAt = kKhkAt + kChunk * 4 * 4,
                   kWAt = kPartsAt + kWarps * 4;
constexpr uint32_t kSolveKeysAt = 0, kSolveH0At = kSolveKeysAt + kChunk * kColumns * 2,
                   kScaledQAt = kSolveH0At + kD * kColumns * 2, kScaledAt = kScaledQAt + 8 * 128 * 16,
                   kExchangeAt = kScaledAt + 2 * scaled_bytes<kD>();
constexpr uint32_t kQTildeAt = 0, kEpilogueKeysAt = kQTildeAt + 2 * kChunk * kLdD * 2,
                   kSAt = kEpilogueKeysAt + kChunk * kLdD * 2, kPAt = kSAt + kColumns * kLdD * 2,
                   kVAt = kPAt + kChunk * kLdC * 2, kEpilogueWAt = kVAt + kChunk * kLdC * 2;
static_assert(kWAt + kChunk * kLdW * 4 <= kPersistentAt && kWAt >= kScaledAt, "the prologue's arrays fit");
static_assert(kExchangeAt + 2 * kPartialFloats * 4 == kPersistentAt && kScaledAt % 1024 == 0 &&
                  kSolveH0At % 1024 == 0,
              "the solve's arrays fit, swizzled ones 1024-byte aligned");
static_assert(kEpilogueWAt + kChunk * kLdW * 4 <= kPersistentAt, "the epilogue's arrays fit");
constexpr size_t kSharedBytes = kEnd + 1023;  // and up to 1023 bytes to the aligned base
static_assert(2 * (kSharedBytes + 1024) <= 228 * 1024, "two blocks share an H100's or H200's SM");

// dst [Rows, Cols] bf16 in wgmma_layout.h's swizzle (1024-byte aligned) <- src rows (row stride src_ld
// elements), asynchronously; rows at or past valid_rows zeros. The block's threads.
template <int Rows, int Cols>
__device__ __forceinline__ void copy_async_swizzled(unsigned char* dst, const Bf16* src, size_t src_ld,
                                                    int valid_rows) {
  for (int i = threadIdx.x; i < Rows * Cols / 8; i += kBlockThreads) {
    const int row = i / (Cols / 8), col = 8 * (i % (Cols / 8));
    const bool valid = row < valid_rows;
    cp_async16_or_zero(dst + wgmma::sw128_offset(row, col, Rows), src + (valid ? row * src_ld + col : 0), valid);
  }
}

template <typename Out>
__global__ void __launch_bounds__(kBlockThreads, 2) gka_forward_bf16_cluster_kernel(const ForwardParams p) {
  extern __shared__ __align__(1024) unsigned char smem_bytes[];
  unsigned char* base = wgmma::align_1024(smem_bytes);
  const auto at = [&](uint32_t offset) { return base + offset; };
  double* gamma = reinterpret_cast<double*>(at(kPersistentAt));
  float* from_start = reinterpret_cast<float*>(gamma + kChunk);
  float* frob = from_start + kChunk;
  float* scan_scratch = frob + kChunk;
  const int rank = cluster::rank(), col0 = kColumns * rank;
  const ChunkPlace c(p, blockIdx.x / 2, blockIdx.y, kD);
  const int valid = c.valid;

  // The prologue, whole in each block.
  const SplitMatrix K{reinterpret_cast<Bf16*>(at(kKeysAt)), nullptr}, H{reinterpret_cast<Bf16*>(at(kStateAt)), nullptr};
  float* gram2 = reinterpret_cast<float*>(at(kGramAt));
  float* khk = reinterpret_cast<float*>(at(kKhkAt));
  float* h0_parts = reinterpret_cast<float*>(at(kPartsAt));
  float* W = reinterpret_cast<float*>(at(kWAt));
  load_prologue<kD, kBlockThreads>(p, c, K.hi, H.hi, gamma, scan_scratch, [] {});
  fill_w<kBlockThreads>(W, gamma, valid);
  fill_from_start(from_start, gamma, valid);
  prologue_products<kD, kBlockWarps>(K, H, kLdD, gram2, khk, h0_parts);
  __syncthreads();
  frob_by_recurrences<kD, kBlockWarps>(W, gram2, khk, h0_parts, from_start, frob, valid);
  __syncthreads();  // K, H_0, the squared gram and khk are read no more

  // The solve: this group's columns of the keys and of H_0 straight from memory into the swizzled layout.
  WgmmaOperands ops{};
  ops.keys = at(kSolveKeysAt);
  ops.h0 = at(kSolveH0At);
  ops.scaled_q = reinterpret_cast<float4*>(at(kScaledQAt));
  ops.scaled = at(kScaledAt);
  ops.exchange = reinterpret_cast<float*>(at(kExchangeAt));
  ops.peer_scaled = cluster::peer_address(ops.scaled, 1 - rank);
  ops.peer_exchange = cluster::peer_address(ops.exchange, 1 - rank);
  copy_async_swizzled<kChunk, kColumns>(ops.keys, p.k + c.first_row + col0, c.row_stride, valid);
  copy_async_swizzled<kD, kColumns>(ops.h0, p.h_states + c.state_at + col0, kD, kD);
  cp_async_commit();
  const auto q_pair = [&](int row, int col) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p.q + c.first_row + row * c.row_stride + col));
  };
  const auto w_at = [&](int t, int u) { return W[t * kLdW + u]; };
  WgmmaSolve<kD, /*Cluster=*/true> solve;
  solve.start(ops, valid, frob, from_start, p.ridge_strength, q_pair, w_at);
  cp_async_wait<0>();
  wgmma::fence_proxy_async();  // the copies, and eta q, seen by the MMAs (and after the barrier)
  // Both blocks hold W in registers and their operands in place: from here the peer writes into this
  // block's X_sw and exchange buffers, which cover the prologue's arrays.
  cluster::sync();
  solve.run(ops, p.ridge_strength, p.num_iter);
  cluster::sync();  // both blocks' last MMAs and exchange reads are done: their shared memory is free

  // The epilogue: q~ of this block's columns into both blocks' q~ (split), then the operands of its
  // columns of o.
  const SplitMatrix X{reinterpret_cast<Bf16*>(at(kQTildeAt)), reinterpret_cast<Bf16*>(at(kQTildeAt) + kChunk * kLdD * 2)};
  const uint32_t peer_hi = cluster::peer_address(X.hi, 1 - rank), peer_lo = cluster::peer_address(X.lo, 1 - rank);
#pragma unroll
  for (int e = 0; e < WgmmaSolve<kD, true>::kAcc; e += 2) {
    const int row = accumulator_row(e), col = col0 + accumulator_col(e);
    const float2 mixed = q_tilde(p, c, row, col, make_float2(solve.x[e], solve.x[e + 1]));
    const uint32_t hi = bf16_pair(mixed.x, mixed.y), lo = bf16_residual(mixed.x, mixed.y, hi);
    const int offset = row * kLdD + col;
    *reinterpret_cast<uint32_t*>(X.hi + offset) = hi;
    *reinterpret_cast<uint32_t*>(X.lo + offset) = lo;
    cluster::store(peer_hi + 2 * offset, hi);
    cluster::store(peer_lo + 2 * offset, lo);
  }
  const SplitMatrix keys{reinterpret_cast<Bf16*>(at(kEpilogueKeysAt)), nullptr};
  const SplitMatrix S{reinterpret_cast<Bf16*>(at(kSAt)), nullptr}, P{reinterpret_cast<Bf16*>(at(kPAt)), nullptr};
  Bf16* V = reinterpret_cast<Bf16*>(at(kVAt));
  float* W_after = reinterpret_cast<float*>(at(kEpilogueWAt));
  copy_async<kChunk, kD, kBlockThreads>(keys.hi, p.k + c.first_row, c.row_stride, valid);
  copy_async<kColumns, kD, kBlockThreads>(S.hi, p.s_states + c.state_at + static_cast<size_t>(col0) * kD, kD);
  copy_async<kChunk, kColumns, kBlockThreads>(V, p.v + c.first_row + col0, c.row_stride, valid);
  cp_async_commit();
  fill_w<kBlockThreads>(W_after, gamma, valid);
  cp_async_wait<0>();
  cluster::sync();  // q~ whole in both blocks (no remote access after this), the epilogue's operands in place
  chunk_matrix<kD, kBlockWarps>(X, keys, kLdD, P, kLdC, W_after);
  __syncthreads();
  write_output<kD, kBlockWarps, Out>(p, c, X, kLdD, S, P.hi, kLdC, V, kLdC, from_start, col0, col0 + kColumns);
}

template <typename Out>
void launch_typed(const ForwardParams& p, int64_t M) {
  const auto kernel = gka_forward_bf16_cluster_kernel<Out>;
  PRIME_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSharedBytes)));
  PRIME_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(2 * p.num_chunks), static_cast<unsigned>(M));
  config.blockDim = dim3(kBlockThreads);
  config.dynamicSmemBytes = kSharedBytes;
  config.stream = at::cuda::getCurrentCUDAStream();
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = 2;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  PRIME_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
  PRIME_CUDA_CHECK_LAUNCH("gka_forward_bf16_cluster_kernel");
}

}  // namespace

void launch_gka_forward_bf16_cluster(const gka_forward::ForwardParams& p, int64_t M, bool fp32_out) {
  fp32_out ? launch_typed<float>(p, M) : launch_typed<Bf16>(p, M);
}

}  // namespace prime::kernels::detail
