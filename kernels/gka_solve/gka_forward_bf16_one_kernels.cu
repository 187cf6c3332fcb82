// GKA's bf16 forward at D = 128 with the solve on one warpgroup a chunk (gka_solve_bf16_wgmma_one.cuh), two
// chunks a multiprocessor: the per-chunk kernel's work (gka_forward_bf16_kernels.cu) in three launches, so that
// the solve's block holds only what the solve reads (112 KB):
//   1. the prologue, a block of 16 warps per chunk (two a multiprocessor): G_t, W, e^{G_t} and ||H_t||_F by the
//      recurrences, as the warpgroup form takes them (the same parts, the same bits); e^{G} and ||H_t||_F go to a
//      workspace;
//   2. the solve, a warpgroup per chunk (two a multiprocessor): the keys, H_0 and q from the walks' operands, W
//      formed again from G_t, the row factors from the workspace; x to the workspace (fp32);
//   3. the epilogue, a block of 16 warps per chunk (two a multiprocessor: W formed where the chunk matrix takes
//      it, not kept): q~ from x (kept split), the chunk matrix and o, as the per-chunk kernel forms them.
// The workspace is 32.5 KB a chunk, written once and read once: ~0.3 ms of traffic at (4,8192,32,128) on an
// H100.
#include <ATen/cuda/CUDAContext.h>

#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/gka_solve/gka_forward_bf16_parts.cuh"
#include "kernels/gka_solve/gka_solve_bf16_wgmma_one.cuh"

namespace prime::kernels::detail {

namespace {

using namespace gka_bf16;
using namespace gka_forward;

constexpr int kD = 128, kLd = ld_of(kD), kLdP = ld_of(kChunk);
constexpr int kBlockThreads = 32 * kWarps;  // the prologue's and the epilogue's 16 warps

// What the launches pass between them, per chunk (chunk index m N + n).
struct OneGroupWorkspace {
  float* from_start;  // [chunks][64]: e^{G_t}
  float* frob;        // [chunks][64]: ||H_t||_F
  float* x;           // [chunks][64][128]: the solve's result
};

// The three kernels' parameters.
struct OneGroupForward {
  ForwardParams p;
  OneGroupWorkspace w;
};

__device__ __forceinline__ size_t chunk_index(const ForwardParams& p, const ChunkPlace& c) {
  return static_cast<size_t>(c.m) * p.num_chunks + c.n;
}

// The prologue's shared memory: K [64][kLd], H_0 [128][kLd] (bf16), gamma [64] (double), W and the squared gram
// [64][kLdW], khk [64][4], the parts of ||H_0||^2 [16], e^{G}, ||H_t||_F and the scan's scratch [64] each.
constexpr size_t kPrologueBytes = (kChunk + kD) * kLd * 2 + kChunk * 8 +
                                  (2 * kChunk * kLdW + kChunk * 4 + kWarps + 3 * kChunk) * 4;

__global__ void __launch_bounds__(kBlockThreads, 2) one_group_prologue_kernel(const OneGroupForward params) {
  const ForwardParams& p = params.p;
  const OneGroupWorkspace& w = params.w;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  Bf16* keys = reinterpret_cast<Bf16*>(smem_bytes);
  Bf16* h0 = keys + kChunk * kLd;
  double* gamma = reinterpret_cast<double*>(h0 + kD * kLd);
  float* W = reinterpret_cast<float*>(gamma + kChunk);
  float* gram2 = W + kChunk * kLdW;
  float* khk = gram2 + kChunk * kLdW;
  float* h0_parts = khk + kChunk * 4;
  float* from_start = h0_parts + kWarps;
  float* frob = from_start + kChunk;
  float* scratch = frob + kChunk;
  const ChunkPlace c(p, blockIdx.x, blockIdx.y, kD);
  load_prologue<kD, kBlockThreads>(p, c, keys, h0, gamma, scratch, [] {});
  fill_w<kBlockThreads>(W, gamma, c.valid);
  fill_from_start(from_start, gamma, c.valid);
  prologue_products<kD, kWarps>(SplitMatrix{keys, nullptr}, SplitMatrix{h0, nullptr}, kLd, gram2, khk, h0_parts);
  __syncthreads();
  frob_by_recurrences<kD, kWarps>(W, gram2, khk, h0_parts, from_start, frob, c.valid);
  __syncthreads();
  const size_t chunk = chunk_index(p, c);
  if (threadIdx.x < kChunk) {
    w.from_start[chunk * kChunk + threadIdx.x] = from_start[threadIdx.x];
    w.frob[chunk * kChunk + threadIdx.x] = frob[threadIdx.x];
  }
}

constexpr size_t kSolveBytes = kOneGroupSharedBytes + 1024;  // the operands and up to 1,023 bytes of alignment

__global__ void __launch_bounds__(128, 2) one_group_solve_kernel(const OneGroupForward params) {
  const ForwardParams& p = params.p;
  const OneGroupWorkspace& w = params.w;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  const OneGroupOperands ops(smem_bytes);
  const ChunkPlace c(p, blockIdx.x, blockIdx.y, kD);
  const size_t chunk = chunk_index(p, c);
  // G_t in x_prev's place, which the first iteration's update writes first (after the barrier below).
  double* gamma = reinterpret_cast<double*>(ops.x_prev);
  scan_chunk_gamma(p, c, gamma, reinterpret_cast<float*>(gamma + kChunk));
  copy_swizzled_rows<kChunk>(ops.keys, p.k + c.first_row, c.row_stride, c.valid);
  copy_swizzled_rows<kD>(ops.h0, p.h_states + c.state_at, kD, kD);
  const Bf16* q = p.q + c.first_row;
  __syncthreads();  // gamma
  OneGroupSolve solve;
  solve.start(
      ops, c.valid, w.frob + chunk * kChunk, w.from_start + chunk * kChunk, p.ridge_strength,
      [&](int row, int col) {
        return row < c.valid ? *reinterpret_cast<const uint32_t*>(q + row * c.row_stride + col) : 0u;
      },
      [&](int t, int s) { return weight_at(gamma, t, s, c.valid); });
  wgmma::fence_proxy_async();  // the swizzled copies seen by the MMAs
  __syncthreads();
  solve.run(ops, p.ridge_strength, p.num_iter);
  float* x = w.x + chunk * kChunk * kD;
#pragma unroll
  for (int e = 0; e < OneGroupSolve::kAcc; e += 2)
    *reinterpret_cast<float2*>(x + wgmma::accumulator_row(e % 32) * kD + OneGroupSolve::col_of(e)) =
        make_float2(solve.x[e], solve.x[e + 1]);
}

// The epilogue's shared memory: q~ split (hi, lo), K, V [64][kLd] and S_0^T [128][kLd] (bf16), the chunk matrix
// [64][kLdP] (bf16), gamma [64] (double), e^{G} and the scan's scratch [64] each: 112 KB, two blocks a
// multiprocessor.
constexpr size_t kEpilogueBytes = (4 * kChunk + kD) * kLd * 2 + kChunk * kLdP * 2 + kChunk * 8 + 2 * kChunk * 4;
static_assert(kEpilogueBytes <= 112 * 1024, "two epilogue blocks a multiprocessor");

template <typename Out>
__global__ void __launch_bounds__(kBlockThreads, 2) one_group_epilogue_kernel(const OneGroupForward params) {
  const ForwardParams& p = params.p;
  const OneGroupWorkspace& w = params.w;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  Bf16* base = reinterpret_cast<Bf16*>(smem_bytes);
  const SplitMatrix X{base, base + kChunk * kLd};
  const SplitMatrix K{base + 2 * kChunk * kLd, nullptr};
  Bf16* values = base + 3 * kChunk * kLd;
  const SplitMatrix S{base + 4 * kChunk * kLd, nullptr};
  const SplitMatrix P{S.hi + kD * kLd, nullptr};
  double* gamma = reinterpret_cast<double*>(P.hi + kChunk * kLdP);
  float* from_start = reinterpret_cast<float*>(gamma + kChunk);
  float* scratch = from_start + kChunk;
  const ChunkPlace c(p, blockIdx.x, blockIdx.y, kD);
  copy_async<kChunk, kD, kBlockThreads>(K.hi, p.k + c.first_row, c.row_stride, c.valid);
  copy_async<kChunk, kD, kBlockThreads>(values, p.v + c.first_row, c.row_stride, c.valid);
  copy_async<kD, kD, kBlockThreads>(S.hi, p.s_states + c.state_at, kD);
  cp_async_commit();
  scan_chunk_gamma(p, c, gamma, scratch);
  // q~ for each pair of the chunk's x, split (rows past the chunk's are zeros: q_tilde).
  const float2* x = reinterpret_cast<const float2*>(w.x + chunk_index(p, c) * kChunk * kD);
  for (int i = threadIdx.x; i < kChunk * kD / 2; i += kBlockThreads) {
    const int row = 2 * i / kD, col = 2 * i % kD;
    const float2 mixed = q_tilde(p, c, row, col, x[i]);
    store_split<true>(X, row * kLd + col, mixed.x, mixed.y);
  }
  __syncthreads();  // gamma
  fill_from_start(from_start, gamma, c.valid);
  cp_async_wait<0>();
  __syncthreads();  // q~, K, V, S_0^T and e^{G} in place
  chunk_matrix<kD, kWarps>(X, K, kLd, P, kLdP, [&](int t, int j) { return weight_at(gamma, t, j, c.valid); });
  __syncthreads();
  write_output<kD, kWarps, Out>(p, c, X, kLd, S, P.hi, kLdP, values, kLd, from_start);
}

}  // namespace

void launch_gka_forward_bf16_one_group(const ForwardParams& p, int64_t M, bool fp32_out,
                                       const at::TensorOptions& options) {
  const int64_t chunks = M * p.num_chunks;
  const at::TensorOptions f32 = options.dtype(at::kFloat);
  const at::Tensor factors = at::empty({2, chunks, kChunk}, f32);
  const at::Tensor x = at::empty({chunks, kChunk, kD}, f32);
  const OneGroupForward params{p, {factors[0].data_ptr<float>(), factors[1].data_ptr<float>(), x.data_ptr<float>()}};
  const dim3 grid(static_cast<unsigned>(p.num_chunks), static_cast<unsigned>(M));
  launch_with_shared(one_group_prologue_kernel, grid, kPrologueBytes, kBlockThreads, params, "one_group_prologue");
  // The largest shared-memory carveout, so that two solve blocks' 113 KB fit a multiprocessor.
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(one_group_solve_kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
  launch_with_shared(one_group_solve_kernel, grid, kSolveBytes, 128, params, "one_group_solve");
  if (fp32_out)
    launch_with_shared(one_group_epilogue_kernel<float>, grid, kEpilogueBytes, kBlockThreads, params,
                       "one_group_epilogue");
  else
    launch_with_shared(one_group_epilogue_kernel<Bf16>, grid, kEpilogueBytes, kBlockThreads, params,
                       "one_group_epilogue");
}

}  // namespace prime::kernels::detail
