// GKA's bf16 forward at D = 128 with the solve on one warpgroup a chunk (gka_solve_bf16_wgmma_one.cuh), two
// chunks a multiprocessor: the per-chunk kernel's work (gka_forward_bf16_kernels.cu) in two launches, so that the
// solve's block holds only what the solve reads (112 KB):
//   1. the prologue and the solve, a warpgroup per chunk (two a multiprocessor): G_t, ||H_t||_F by the
//      recurrences (K H_0 and K K^T on the warpgroup MMAs from the solve's swizzled K and H_0, the terms summed by
//      rows, the scan as frob_by_recurrences's), W from G_t, then the solve from the walks' K, H_0 and q; x to a
//      workspace (fp32, 32 KB a chunk, written once and read once: ~0.3 ms of traffic at (4,8192,32,128) on an
//      H100);
//   2. the epilogue, a block of 16 warps per chunk (two a multiprocessor: W formed where the chunk matrix takes
//      it, not kept): q~ from x (kept split), the chunk matrix and o, as the per-chunk kernel forms them.
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
constexpr int kBlockThreads = 32 * kWarps;  // the epilogue's 16 warps

// What the launches pass between them, per chunk (chunk index m N + n).
struct OneGroupWorkspace {
  float* x;  // [chunks][64][128]: the solve's result
};

// The two kernels' parameters.
struct OneGroupForward {
  ForwardParams p;
  OneGroupWorkspace w;
};

__device__ __forceinline__ size_t chunk_index(const ForwardParams& p, const ChunkPlace& c) {
  return static_cast<size_t>(c.m) * p.num_chunks + c.n;
}

// The prologue's arrays in x_prev's place (free until run() zeroes it, after the barrier that follows start()).
struct PrologueScratch {
  double* gamma;      // [64]: G_t
  float* scratch;     // [64]: the gamma scan's
  float* cross;       // [64]: k_t^T H_0 k_t
  float* intra;       // [64]: 2 sum_{i<t} W_ti (k_t . k_i)^2 + (k_t . k_t)^2
  float* from_start;  // [64]: e^{G_t} (0 past the chunk's rows)
  float* frob;        // [64]: ||H_t||_F (0 past the chunk's rows)
  float* h0_parts;    // [4]: ||H_0||^2 by warp

  __device__ explicit PrologueScratch(float4* x_prev)
      : gamma(reinterpret_cast<double*>(x_prev)),
        scratch(reinterpret_cast<float*>(gamma + kChunk)),
        cross(scratch + kChunk),
        intra(cross + kChunk),
        from_start(intra + kChunk),
        frob(from_start + kChunk),
        h0_parts(frob + kChunk) {}
};

// Sums v over the lane's quad (the four lanes that hold one accumulator row's columns).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// e^{G_t} and ||H_t||_F of the chunk's rows into f.from_start and f.frob, from G_t (f.gamma) and the swizzled K and
// H_0 (every thread past a barrier after their copies and the proxy fence): the block's 128 threads, which
// synchronise inside; the caller synchronises after. The terms are frob_by_recurrences's, the products on the
// warpgroup MMAs with K's fragments read from its swizzled copy (A from registers, as x's in the solve): Z = K H_0
// (two 64-column panels), the gram K K^T; each row's terms summed over its quad of lanes.
__device__ __forceinline__ void frob_on_warpgroup(const OneGroupOperands& ops, const PrologueScratch& f, int valid) {
  using namespace wgmma;
  const int thread = threadIdx.x % 128, warp = thread / 32, lane = thread % 32;
  // ||H_0||^2: thread i the 16-byte chunks i, i + 128, ... (the swizzle moves chunks, not their sum).
  float h0_sum = 0.0f;
  for (int i = thread; i < kD * kD / 8; i += 128) {
    const uint4 chunk = *reinterpret_cast<const uint4*>(ops.h0 + 16 * i);
    const uint32_t pairs[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 v = bf16_tiles::bf16_pair_values(pairs[k]);
      h0_sum += v.x * v.x + v.y * v.y;
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) h0_sum += __shfl_xor_sync(0xffffffffu, h0_sum, offset);
  if (lane == 0) f.h0_parts[warp] = h0_sum;
  // K's fragments: step s holds columns 16 s .. 16 s + 15 at x's places (OneGroupSolve::col_of).
  uint32_t keys[8][4];
#pragma unroll
  for (int s = 0; s < 8; ++s) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int e = 8 * s + 2 * r;
      keys[s][r] = *reinterpret_cast<const uint32_t*>(
          ops.keys + sw128_offset(accumulator_row(e % 32), OneGroupSolve::col_of(e), kChunk));
    }
  }
  // The shared addresses through an opaque move: descriptors of their own, so that the compiler does not keep the
  // solve's (the same values) in ordinary registers from here on.
  uint32_t keys_at, h0_at;
  asm volatile("mov.u32 %0, %1;" : "=r"(keys_at) : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(ops.keys))));
  asm volatile("mov.u32 %0, %1;" : "=r"(h0_at) : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(ops.h0))));
  const WgmmaDescriptors<kD> panel0(keys_at, keys_at, h0_at, 0), panel1(keys_at, keys_at, h0_at, 64);
  float z0[32], z1[32], gram[32];
#pragma unroll
  for (int e = 0; e < 32; ++e) z0[e] = z1[e] = gram[e] = 0.0f;
  fence();
#pragma unroll
  for (int s = 0; s < 8; ++s) mma_rs<true>(z0, keys[s], panel0.h0_by_depth(s), s > 0);
#pragma unroll
  for (int s = 0; s < 8; ++s) mma_rs<true>(z1, keys[s], panel1.h0_by_depth(s), s > 0);
#pragma unroll
  for (int s = 0; s < 8; ++s) mma_rs<false>(gram, keys[s], panel0.keys_by_depth(s), s > 0);
  commit();
  wait<0>();
  fence_operands(z0);
  fence_operands(z1);
  fence_operands(gram);
  // The thread's two rows (accumulator_row(0) and accumulator_row(2)): k^T H_0 k and the gram's terms.
  float cross[2] = {0.0f, 0.0f}, below[2] = {0.0f, 0.0f}, diagonal[2] = {0.0f, 0.0f};
#pragma unroll
  for (int e = 0; e < 64; ++e) {
    const float2 k = bf16_tiles::bf16_pair_values(keys[e / 8][(e % 8) / 2]);
    cross[(e / 2) % 2] += (e < 32 ? z0[e] : z1[e - 32]) * (e % 2 ? k.y : k.x);
  }
#pragma unroll
  for (int e = 0; e < 32; ++e) {
    const int t = accumulator_row(e), i = accumulator_col(e);
    const float square = gram[e] * gram[e];
    if (i < t) below[(e / 2) % 2] += weight_at(f.gamma, t, i, valid) * square;
    if (i == t) diagonal[(e / 2) % 2] += square;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    cross[r] = quad_sum(cross[r]);
    below[r] = quad_sum(below[r]);
    diagonal[r] = quad_sum(diagonal[r]);
    if (lane % 4 == 0) {
      const int t = accumulator_row(2 * r);
      f.cross[t] = cross[r];
      f.intra[t] = 2.0f * below[r] + diagonal[r];
    }
  }
  if (thread < kChunk) f.from_start[thread] = thread < valid ? expf(static_cast<float>(f.gamma[thread])) : 0.0f;
  __syncthreads();
  if (warp == 0) {
    const float h0_norm2 = (f.h0_parts[0] + f.h0_parts[1]) + (f.h0_parts[2] + f.h0_parts[3]);
    frob_scan(
        h0_norm2, [&](int t) { return weight_at(f.gamma, t, t - 1, valid); }, [&](int t) { return f.cross[t]; },
        [&](int t) { return f.intra[t]; }, f.from_start, f.frob, valid);
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
  const PrologueScratch f(ops.x_prev);
  scan_chunk_gamma(p, c, f.gamma, f.scratch);
  copy_swizzled_rows<kChunk>(ops.keys, p.k + c.first_row, c.row_stride, c.valid);
  copy_swizzled_rows<kD>(ops.h0, p.h_states + c.state_at, kD, kD);
  wgmma::fence_proxy_async();  // the swizzled copies seen by the MMAs
  __syncthreads();             // gamma, K and H_0
  frob_on_warpgroup(ops, f, c.valid);
  __syncthreads();  // e^{G} and ||H_t||_F
  const Bf16* q = p.q + c.first_row;
  OneGroupSolve solve;
  solve.start(
      ops, c.valid, f.frob, f.from_start, p.ridge_strength,
      [&](int row, int col) {
        return row < c.valid ? *reinterpret_cast<const uint32_t*>(q + row * c.row_stride + col) : 0u;
      },
      [&](int t, int s) { return weight_at(f.gamma, t, s, c.valid); });
  wgmma::fence_proxy_async();  // start()'s shared stores seen by the MMAs
  __syncthreads();             // every thread past start(): run() may zero x_prev's place
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
  const at::Tensor x = at::empty({chunks, kChunk, kD}, f32);
  const OneGroupForward params{p, {x.data_ptr<float>()}};
  const dim3 grid(static_cast<unsigned>(p.num_chunks), static_cast<unsigned>(M));
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
