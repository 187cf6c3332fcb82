// GKA's decode step with a CTA per multiprocessor walking heads (gka_decode_streamed.h), at D = 64 and 128.
// The per-head kernel (gka_decode_kernels.cu) holds one head's H in the registers of all 512 threads,
// so a multiprocessor runs one head at a time, and each head's state traffic and 30-iteration solve
// follow one another (at B = 64 a head took ~33 us, its 256 KB of state traffic among them). Here
// the CTA stays and takes head after head (blockIdx.x, + gridDim.x, ...), and while it solves one,
// the next head's two states are copied into shared memory (cp.async, 2 x 64 KB at D = 128): H's as
// soon as this head's H is in registers, S's as soon as this head's S has been read. The stores go
// out from registers as before, so a head's traffic overlaps the solve of the head after it.
// For an fp32 solve at D = 128 (a head's H 32 registers a thread: half the register file) two blocks share a
// multiprocessor, and each stages only the next head's S, reading its H straight from the cache (both blocks'
// shared memory fits): each block's solve then has the other's traffic beside it (B = 64: 0.242 -> 0.228 ms
// against the per-head kernel's two blocks on an H100; kernels/README.md).
// With D a compile-time constant every thread owns a full block of rows (no per-row branch) and reads
// its rows' x in 16-byte loads. The omega weights, the same for every head (they depend on r alone), are
// computed once per CTA, not by every thread at every iteration (a float64 division each).
//
// The arithmetic is the per-head kernel's, operation for operation (the same groups of rows, the same
// four fma chains and their sum, the groups' partial sums added in group order, the same update), so
// the two give the same bits; the tests hold them to that.
#include <ATen/cuda/CUDAContext.h>

#include "kernels/common/cp_async.cuh"
#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/ssm_decode/gka_decode_step.cuh"
#include "kernels/ssm_decode/gka_decode_streamed.h"

namespace prime::kernels::detail {

namespace {

constexpr int kThreads = kGkaThreads;

template <int kD>
struct Layout {
  static constexpr int kPairs = kD / 2;               // column pairs
  static constexpr int kGroups = kThreads / kPairs;   // groups of rows: 8 at D = 128, 16 at D = 64
  static constexpr int kRows = kD / kGroups;          // rows a thread owns: 16, 4
  static_assert(kThreads % kPairs == 0 && kD % kGroups == 0 && kRows % 4 == 0, "a thread owns whole rows");
  static constexpr int kChunks = kD * kD / 4;         // 16-byte pieces of a state
  static_assert(kChunks % kThreads == 0, "every thread copies as many pieces");
};

// kPaired: two blocks to a multiprocessor (an fp32 solve at D = 128: 32 registers of H a thread, half the
// register file a block); H is then read from the cache, not staged, so that both blocks' shared memory fits.
template <typename S, int kD>
constexpr bool kPaired = sizeof(S) == 4 && kD == 128;

template <typename S, int kD>
struct Shared {
  float stage_kk[kPaired<S, kD> ? 4 : kD * kD];  // the next head's H (fp32, as the cache holds it), unless paired
  float stage_kv[kD * kD];  // the next head's S
  S partial[Layout<kD>::kGroups * kD];
  alignas(16) S q[kD];  // q, then q~
  alignas(16) S k[kD];
  alignas(16) S x[kD];
  S omega[kGkaStreamedMaxIterations];  // the Chebyshev weights, the same for every head (they depend on r alone)
  S scratch[kThreads / 32];
};

// Queues the copy of a head's D x D state into `stage` (this thread's share of 16-byte pieces).
template <int kD>
__device__ __forceinline__ void copy_state(float* stage, const float* state) {
#pragma unroll
  for (int i = 0; i < Layout<kD>::kChunks / kThreads; ++i) {
    const int piece = static_cast<int>(threadIdx.x) + i * kThreads;
    cp_async16(stage + 4 * piece, state + 4 * piece);
  }
}

// Rows [row_begin, row_begin + kRows) of columns c0 and c0 + 1 of a state: each value read from the stage,
// replaced by update(r, i, value) for the thread's r-th row and i-th column, and stored to the cache.
template <int kD, int kRows, typename Update>
__device__ __forceinline__ void update_rows(const float* stage, float* state, int row_begin, int c0,
                                            const Update& update) {
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = row_begin + r;
    const float2 previous = *reinterpret_cast<const float2*>(stage + row * kD + c0);
    const float after[2] = {update(r, 0, previous.x), update(r, 1, previous.y)};
    store_floats<2>(state + row * kD + c0, after);
  }
}

// H = e^{decay} H + k k^T for rows [row_begin, row_begin + kRows) of columns c0, c0 + 1, read straight from the
// cache (all the thread's loads in flight, then its stores), into h and back; ||H||_F^2 added to `squares`.
template <typename S, int kD, int kRows>
__device__ __forceinline__ void update_h_in_place(float* state, int row_begin, int c0, S decay, const S* k,
                                                  S (&h)[kRows][2], S& squares) {
  float2 previous[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) previous[r] = *reinterpret_cast<const float2*>(state + (row_begin + r) * kD + c0);
  const S k_c[2] = {k[c0], k[c0 + 1]};
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float before[2] = {previous[r].x, previous[r].y};
    float after[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const S value = fma(decay, static_cast<S>(before[i]), k[row_begin + r] * k_c[i]);
      h[r][i] = value;
      squares = fma(value, value, squares);
      after[i] = static_cast<float>(value);
    }
    store_floats<2>(state + (row_begin + r) * kD + c0, after);
  }
}

template <typename S, int kD>
__global__ void __launch_bounds__(kThreads, kPaired<S, kD> ? 2 : 1)
    gka_decode_streamed_kernel(const GkaStep<S> p, int heads) {
  using L = Layout<kD>;
  extern __shared__ __align__(16) unsigned char raw_shared[];
  auto& sh = *reinterpret_cast<Shared<S, kD>*>(raw_shared);
  constexpr int kChains = 4;
  const int tid = static_cast<int>(threadIdx.x);
  const int g = tid / L::kPairs, c0 = (tid % L::kPairs) * 2;
  const int row_begin = g * L::kRows;
  const bool owner = tid < kD;  // updates x[tid] and sums column tid's partial sums
  const bool solves = p.num_iter > 0;
  constexpr int64_t kMatrix = static_cast<int64_t>(kD) * kD;

  if (tid == 0 && solves) table_omegas(sh.omega, p.num_iter, p.ridge);
  pdl_wait();  // the states and q, k, v come from kernels before (pdl.cuh)
  pdl_launch_dependents();
  int head = static_cast<int>(blockIdx.x);
  // In flight, oldest first: H(head), S(head); then, per head, H(next) once H(head) is in registers and
  // S(next) once S(head) is read (empty groups past the last head keep the count).
  if (solves && !kPaired<S, kD>) copy_state<kD>(sh.stage_kk, p.kk + head * kMatrix);
  cp_async_commit();
  copy_state<kD>(sh.stage_kv, p.kv + head * kMatrix);
  cp_async_commit();

  for (; head < heads; head += static_cast<int>(gridDim.x)) {
    const int next = head + static_cast<int>(gridDim.x);
    const int64_t bh = head, matrix = bh * kMatrix;
    if (owner) {
      sh.q[tid] = p.q[bh * kD + tid];
      sh.k[tid] = p.k[bh * kD + tid];
    }
    if (solves) {
      cp_async_wait<1>();  // H(head) is here; S(head) may still be on its way
      __syncthreads();
      // H = e^{g_kk} H + k k^T into registers and back to the cache; ||H||_F^2 on the way.
      S h[L::kRows][2];
      S squares = 0;
      const S decay_kk = p.decay_kk != nullptr ? exp(p.decay_kk[bh]) : S(1);
      if constexpr (kPaired<S, kD>) {
        update_h_in_place<S, kD, L::kRows>(p.kk + matrix, row_begin, c0, decay_kk, sh.k, h, squares);
      } else {
        S k_c[2];
        load_values<2>(sh.k + c0, k_c);
        update_rows<kD, L::kRows>(sh.stage_kk, p.kk + matrix, row_begin, c0, [&](int r, int i, float previous) {
          const S value = fma(decay_kk, static_cast<S>(previous), sh.k[row_begin + r] * k_c[i]);
          h[r][i] = value;
          squares = fma(value, value, squares);
          return static_cast<float>(value);
        });
      }
      const GkaSolveScalars<S> solve(gka_block_sum(squares, sh.scratch), p.ridge);
      // Every thread has read its rows of the stage (before the sum's barrier): the next H may come in.
      if (next < heads && !kPaired<S, kD>) copy_state<kD>(sh.stage_kk, p.kk + next * kMatrix);
      cp_async_commit();
      S eta_q = 0, x = 0, x_prev = 0;
      if (owner) {
        eta_q = solve.eta * sh.q[tid];
        x = eta_q;
        sh.x[tid] = x;
      }
      __syncthreads();
      for (int iteration = 0; iteration < p.num_iter; ++iteration) {
        S sums[kChains][2] = {};
#pragma unroll
        for (int r0 = 0; r0 < L::kRows; r0 += 4) {
          S x_rows[4];
          if constexpr (sizeof(S) == 8) {
            const double2 a = *reinterpret_cast<const double2*>(sh.x + row_begin + r0);
            const double2 b = *reinterpret_cast<const double2*>(sh.x + row_begin + r0 + 2);
            x_rows[0] = a.x, x_rows[1] = a.y, x_rows[2] = b.x, x_rows[3] = b.y;
          } else {
            const float4 a = *reinterpret_cast<const float4*>(sh.x + row_begin + r0);
            x_rows[0] = a.x, x_rows[1] = a.y, x_rows[2] = a.z, x_rows[3] = a.w;
          }
#pragma unroll
          for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int i = 0; i < 2; ++i)
              sums[(r0 + r) % kChains][i] = fma(h[r0 + r][i], x_rows[r], sums[(r0 + r) % kChains][i]);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
          sh.partial[g * kD + c0 + i] = (sums[0][i] + sums[1][i]) + (sums[2][i] + sums[3][i]);
        __syncthreads();
        if (owner) {
          S hx = 0;
#pragma unroll
          for (int gi = 0; gi < L::kGroups; ++gi) hx += sh.partial[gi * kD + tid];
          const S updated = solve.next(iteration, sh.omega[iteration], eta_q, x_prev, x, hx);
          x_prev = x;
          x = updated;
          sh.x[tid] = x;
        }
        __syncthreads();
      }
      if (owner) sh.q[tid] = p.alpha != nullptr ? sh.q[tid] + p.alpha[bh] * (x - sh.q[tid]) : x;  // q~
      cp_async_wait<1>();  // S(head) is here; H(next) may still be on its way
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    // S = e^{g_kv} S + k v^T, back to the cache; o = scale S^T q~ from the new values.
    {
      const S decay = p.decay_kv != nullptr ? exp(p.decay_kv[bh]) : S(1);
      S v_c[2], sums[2] = {};
      v_c[0] = p.v[bh * kD + c0], v_c[1] = p.v[bh * kD + c0 + 1];
      update_rows<kD, L::kRows>(sh.stage_kv, p.kv + matrix, row_begin, c0, [&](int r, int i, float previous) {
        const S s = fma(decay, static_cast<S>(previous), sh.k[row_begin + r] * v_c[i]);
        sums[i] = fma(sh.q[row_begin + r], s, sums[i]);
        return static_cast<float>(s);
      });
#pragma unroll
      for (int i = 0; i < 2; ++i) sh.partial[g * kD + c0 + i] = sums[i];
    }
    __syncthreads();
    // Every thread has read its rows of S's stage: the next S may come in.
    if (next < heads) copy_state<kD>(sh.stage_kv, p.kv + next * kMatrix);
    cp_async_commit();
    if (owner) {
      S out = 0;
#pragma unroll
      for (int gi = 0; gi < L::kGroups; ++gi) out += sh.partial[gi * kD + tid];
      p.o[bh * kD + tid] = static_cast<float>(out * static_cast<S>(p.scale));
    }
  }
  cp_async_wait<0>();  // no copy outlives the block
}

template <typename S, int kD>
void launch_typed(const GkaStep<S>& p, int heads, int multiprocessors, cudaStream_t stream) {
  const auto kernel = gka_decode_streamed_kernel<S, kD>;
  constexpr size_t kBytes = sizeof(Shared<S, kD>);
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kBytes)));
  const int slots = (kPaired<S, kD> ? 2 : 1) * multiprocessors;
  const int blocks = heads < slots ? heads : slots;
  launch_kernel("gka_decode_streamed_kernel", kernel, blocks, kThreads, kBytes, stream, p, heads);
}

}  // namespace

size_t gka_decode_streamed_shared_bytes(int64_t dim, bool float64_solve) {
  if (dim == 128) return float64_solve ? sizeof(Shared<double, 128>) : sizeof(Shared<float, 128>);
  if (dim == 64) return float64_solve ? sizeof(Shared<double, 64>) : sizeof(Shared<float, 64>);
  return 0;
}

template <typename S>
void launch_gka_decode_streamed(const GkaStep<S>& p, int heads, cudaStream_t stream) {
  const int multiprocessors = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  PRIME_CHECK(p.dim == 128 || p.dim == 64, "gka_decode_streamed: D = ", p.dim, " (64 or 128)");
  if (p.dim == 128) launch_typed<S, 128>(p, heads, multiprocessors, stream);
  else launch_typed<S, 64>(p, heads, multiprocessors, stream);
}

template void launch_gka_decode_streamed<float>(const GkaStep<float>&, int, cudaStream_t);
template void launch_gka_decode_streamed<double>(const GkaStep<double>&, int, cudaStream_t);

}  // namespace prime::kernels::detail
