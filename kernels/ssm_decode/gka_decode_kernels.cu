// CUDA kernel of GKA's decode step (ssm_decode.h): one CTA per (b, h) does the whole step on chip.
// The torch form (gka_detail::recurrent_step) is, per layer and token, the two states cast to the
// solve dtype, decayed and updated out of place, ||H||_F, num_iter Chebyshev iterations of a
// batched matrix-vector product and three fused elementwise ops each, the output product, and
// both states copied back: some 150 launches and each state read ~num_iter times. Here H, once
// updated, stays in the registers of the threads that updated it, in the solve precision S
// (float64 by default, GKA's inference solve; fp32 when the layer solves in fp32: at most 32
// values a thread), and every iteration's H x reads it there; each state is read once from and
// written once to HBM (fp32, as the cache keeps it).
//
// Threads: 512 = G groups of D / C column packs (C = 2 adjacent columns where D is even, else 1;
// G = 512 C / D, D <= 128). Thread (g, c) owns columns c, c + C - 1 for the rows of group g (at
// D = 128: 8 groups of 16 rows, 32 values of H a thread): the updates read and write rows
// coalesced (consecutive packs; 16 floats' loads in flight before their stores), and since H is
// symmetric H x is formed by columns, (H x)_c = sum_j H[j][c] x_j, from registers in four fma
// chains per column, x read from shared memory (one broadcast word per row); the G partial sums
// meet in shared memory. With an fp32 solve at D = 64 or 128 two blocks share a multiprocessor
// (kBlocksPerMultiprocessor). The layouts tried and their times: kernels/README.md.
// Arithmetic in S throughout, as the torch form's solve dtype: H = e^{g_kk} H + k k^T (one fma),
// f = sqrt(max(||H||_F^2, 1e-30)), lambda = r f, eta = 2 / (2 lambda + f), the omega recurrence
// with spread = 1 / (2 (2 r + 1)), x_0 = eta q, x' = base + omega (1 - eta lambda) x
// - omega eta H x with base = x_prev + omega (eta q - x_prev) (eta q omega at the first step),
// q~ = q + alpha (x - q), S = e^{g_kv} S + k v^T, o = scale S^T q~ rounded to fp32.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>
#include <cstdint>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/prefetch.cuh"
#include "kernels/common/switches.h"
#include "kernels/ssm_decode/decode_inputs.cuh"
#include "kernels/ssm_decode/gka_decode_step.cuh"
#include "kernels/ssm_decode/gka_decode_streamed.h"
#include "kernels/ssm_decode/ssm_decode_launch.h"

namespace prime::kernels::detail {

namespace {

constexpr int kThreads = kGkaThreads;
constexpr int kMaxDim = 128;
// Floats of a state a thread loads before it uses any: the state is read and written in place, so
// a load the compiler must keep after the previous row's store would wait on its own round trip.
constexpr int kFloatsInFlight = 16;

// Rows a thread owns: at most kMaxRows<kC> (D <= 128: ceil(D / (512 kC / D)) <= 32 / kC).
template <int kC>
constexpr int kMaxRows = 32 / kC;

// Columns [c0, c0 + kC) of rows [begin, begin + count) of a D x D fp32 state, updated in place:
// state[begin + r][c0 + i] = update(r, i, state[begin + r][c0 + i]) for the thread's r-th row
// (r a compile-time index once unrolled), kFloatsInFlight / kC rows' loads issued before their
// stores.
template <int kC, typename Update>
__device__ __forceinline__ void for_rows(float* state, int D, int c0, int begin, int count, const Update& update) {
  constexpr int kBatch = kFloatsInFlight / kC;
#pragma unroll
  for (int r0 = 0; r0 < kMaxRows<kC>; r0 += kBatch) {
    if (r0 >= count) break;
    float values[kBatch][kC];
#pragma unroll
    for (int r = 0; r < kBatch; ++r)
      if (r0 + r < count) load_values<kC>(state + (begin + r0 + r) * D + c0, values[r]);
#pragma unroll
    for (int r = 0; r < kBatch; ++r)
      if (r0 + r < count) {
#pragma unroll
        for (int i = 0; i < kC; ++i) values[r][i] = update(r0 + r, i, values[r][i]);
        store_floats<kC>(state + (begin + r0 + r) * D + c0, values[r]);
      }
  }
}

// CTAs a multiprocessor holds at once: two for an fp32 solve with D a compile-time constant (64 or 128: no
// per-row bounds to keep), where a head's H takes at most 32 registers a thread, half the register file at
// D = 128, so while one head solves the other's state moves (59 registers, no spills); else one (a float64 H
// fills the register file at D = 128, and spills within 64 registers at D = 64).
template <typename S, int kFixedD>
constexpr int kBlocksPerMultiprocessor = kFixedD > 0 && sizeof(S) == 4 ? 2 : 1;

// Each thread owns kC adjacent columns (kC = 2 needs D even) for the rows of its group, and holds
// those entries of H in registers. kFixedD: D as a compile-time constant (64, 128), or 0 for p.dim.
template <typename S, int kC, int kFixedD = 0>
__global__ void __launch_bounds__(kThreads, (kBlocksPerMultiprocessor<S, kFixedD>))
    gka_decode_kernel(const GkaStep<S> p) {
  extern __shared__ __align__(16) unsigned char raw_shared[];
  constexpr int kRows = kMaxRows<kC>;
  constexpr int kChains = 4;
  const int D = kFixedD > 0 ? kFixedD : p.dim;
  const int pairs = D / kC;  // column packs
  const int groups = kThreads / pairs;
  const int tid = static_cast<int>(threadIdx.x);
  const int g = tid / pairs, c0 = (tid % pairs) * kC;
  const bool active = g < groups;
  const int rows_per_group = (D + groups - 1) / groups;
  const int row_begin = min(D, g * rows_per_group), row_end = min(D, row_begin + rows_per_group);
  const int count = active ? row_end - row_begin : 0;
  S* partial = reinterpret_cast<S*>(raw_shared);  // [groups][D]
  S* q = partial + groups * D;
  S* k = q + D;
  S* x = k + D;
  S* x_prev = x + D;
  S* scratch = x_prev + D;                // kThreads / 32
  S* omegas = scratch + kThreads / 32;     // kGkaStreamedMaxIterations: the Chebyshev weights, where they fit
  const bool tabled = p.num_iter <= kGkaStreamedMaxIterations;

  const int64_t bh = blockIdx.x;
  const int64_t matrix = bh * D * D;
  prefetch_l2_block(p.kv + matrix, static_cast<size_t>(D) * D);  // read after the solve
  if (p.kk != nullptr) prefetch_l2_block(p.kk + matrix, static_cast<size_t>(D) * D);
  pdl_wait();  // q, k and the gates come from the kernels before (pdl.cuh); L2 prefetches may precede it
  pdl_launch_dependents();
  for (int i = tid; i < D; i += kThreads) {
    q[i] = p.q[bh * D + i];
    k[i] = p.k[bh * D + i];
  }
  __syncthreads();

  if (p.num_iter > 0) {
    // H = e^{g_kk} H + k k^T, into registers and back to the cache; ||H||_F^2 on the way.
    S h[kRows][kC];
    const S decay = p.decay_kk != nullptr ? exp(p.decay_kk[bh]) : S(1);
    S squares = 0;
    if (count > 0) {
      S k_c[kC];
      load_values<kC>(k + c0, k_c);
      for_rows<kC>(p.kk + matrix, D, c0, row_begin, count, [&](int r, int i, float previous) {
        const S value = fma(decay, static_cast<S>(previous), k[row_begin + r] * k_c[i]);
        h[r][i] = value;
        squares = fma(value, value, squares);
        return static_cast<float>(value);
      });
    }
    if (tid == 0 && tabled) table_omegas(omegas, p.num_iter, p.ridge);  // once, not by every thread each iteration
    const GkaSolveScalars<S> solve(gka_block_sum(squares, scratch), p.ridge);  // its barrier publishes the table
    if (tid < D) x[tid] = solve.eta * q[tid];
    __syncthreads();
    S omega = 2;
    for (int iteration = 0; iteration < p.num_iter; ++iteration) {
      omega = tabled ? omegas[iteration] : S(1) / (S(1) - solve.contraction * omega);
      if (active) {  // this group's part of (H x)_c for its columns (zero without rows), kChains chains
        S sums[kChains][kC] = {};
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (r < count) {
            const S x_j = x[row_begin + r];
#pragma unroll
            for (int i = 0; i < kC; ++i) sums[r % kChains][i] = fma(h[r][i], x_j, sums[r % kChains][i]);
          }
#pragma unroll
        for (int i = 0; i < kC; ++i)
          partial[g * D + c0 + i] = (sums[0][i] + sums[1][i]) + (sums[2][i] + sums[3][i]);
      }
      __syncthreads();
      if (tid < D) {
        S hx = 0;
        for (int gi = 0; gi < groups; ++gi) hx += partial[gi * D + tid];
        const S current = x[tid], previous = x_prev[tid];
        x_prev[tid] = current;
        x[tid] = solve.next(iteration, omega, solve.eta * q[tid], previous, current, hx);
      }
      __syncthreads();
    }
    if (tid < D) {  // q~ = q + alpha (x - q)
      const S solved = x[tid];
      q[tid] = p.alpha != nullptr ? q[tid] + p.alpha[bh] * (solved - q[tid]) : solved;
    }
    __syncthreads();
  }

  // S = e^{g_kv} S + k v^T, back to the cache; o = scale S^T q~ from the new values.
  const S decay = p.decay_kv != nullptr ? exp(p.decay_kv[bh]) : S(1);
  if (active) {  // every group writes its partial sums, zero without rows
    S v_c[kC], sums[kC] = {};
#pragma unroll
    for (int i = 0; i < kC; ++i) v_c[i] = p.v[bh * D + c0 + i];
    for_rows<kC>(p.kv + matrix, D, c0, row_begin, count, [&](int r, int i, float previous) {
      const S s = fma(decay, static_cast<S>(previous), k[row_begin + r] * v_c[i]);
      sums[i] = fma(q[row_begin + r], s, sums[i]);
      return static_cast<float>(s);
    });
#pragma unroll
    for (int i = 0; i < kC; ++i) partial[g * D + c0 + i] = sums[i];
  }
  __syncthreads();
  if (tid < D) {
    S out = 0;
    for (int gi = 0; gi < groups; ++gi) out += partial[gi * D + tid];
    p.o[bh * D + tid] = static_cast<float>(out * static_cast<S>(p.scale));
  }
}

template <typename S>
size_t shared_bytes(int D, int columns) {
  const int groups = kThreads / (D / columns);
  return (static_cast<size_t>(groups) * D + 4 * D + kThreads / 32 + kGkaStreamedMaxIterations) * sizeof(S);
}

template <typename S>
const S* optional_data(const at::Tensor& t) {
  return t.defined() ? static_cast<const S*>(t.data_ptr()) : nullptr;
}

template <typename S, int kC, int kFixedD = 0>
void launch_columns(const GkaStep<S>& p, unsigned heads, cudaStream_t stream) {
  const int groups = kThreads / (p.dim / kC), rows = (p.dim + groups - 1) / groups;
  PRIME_CHECK(rows <= kMaxRows<kC>, "gka_decode: D = ", p.dim, " gives ", rows, " rows a thread, over ",
              kMaxRows<kC>);
  const size_t bytes = shared_bytes<S>(p.dim, kC);
  const auto kernel = gka_decode_kernel<S, kC, kFixedD>;
  PRIME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  launch_kernel("gka_decode_kernel", kernel, heads, kThreads, bytes, stream, p);
}

// The per-head kernel at this D: compiled for D = 128 and 64, generic elsewhere.
template <typename S>
void launch_per_head(const GkaStep<S>& p, unsigned heads, cudaStream_t stream) {
  if (p.dim == 128) launch_columns<S, 2, 128>(p, heads, stream);
  else if (p.dim == 64) launch_columns<S, 2, 64>(p, heads, stream);
  else if (p.dim % 2 == 0) launch_columns<S, 2>(p, heads, stream);
  else launch_columns<S, 1>(p, heads, stream);
}

// Which kernel takes this step. The streamed one (gka_decode_streamed.h) serves D = 64 and 128, at most
// kGkaStreamedMaxIterations iterations, states 16-byte aligned (its copies move 16 bytes), its shared memory
// within the device's; for an fp32 solve at D = 128 two of its blocks share a multiprocessor (measured ahead of
// the per-head kernel's two: kernels/README.md). PRIME_GKA_DECODE_STREAMED: unset ("auto") or "1", the streamed
// kernel where it serves; "0" the per-head kernel (two to a multiprocessor for an fp32 solve at D = 64 and 128).
template <typename S>
bool streamed(const GkaStep<S>& p, int device) {
  const size_t bytes = gka_decode_streamed_shared_bytes(p.dim, sizeof(S) == 8);
  const auto aligned = [](const float* state) {
    return state == nullptr || reinterpret_cast<uintptr_t>(state) % 16 == 0;
  };
  const bool serves = bytes > 0 && p.num_iter <= kGkaStreamedMaxIterations && aligned(p.kk) && aligned(p.kv) &&
                      bytes <= at::cuda::getDeviceProperties(device)->sharedMemPerBlockOptin;
  if (!serves) return false;
  return environment_switch<bool>(
      "PRIME_GKA_DECODE_STREAMED",
      {{"auto", true, "a CTA per multiprocessor walking heads (D = 64, 128), where it serves"},
       {"1", true, "the same as auto"},
       {"0", false, "a CTA per head"}});
}

template <typename S>
void launch_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& alpha,
                  const at::Tensor& decay_kk, const at::Tensor& decay_kv, const at::Tensor& kk_state,
                  const at::Tensor& kv_state, const at::Tensor& o, const GkaDecodeOptions& options) {
  const int D = static_cast<int>(kv_state.size(3));
  GkaStep<S> p{};
  p.q = optional_data<S>(q);
  p.k = optional_data<S>(k);
  p.v = optional_data<S>(v);
  p.alpha = optional_data<S>(alpha);
  p.decay_kk = optional_data<S>(decay_kk);
  p.decay_kv = optional_data<S>(decay_kv);
  p.kk = options.num_iter > 0 ? static_cast<float*>(kk_state.data_ptr()) : nullptr;
  p.kv = static_cast<float*>(kv_state.data_ptr());
  p.o = static_cast<float*>(o.data_ptr());
  p.dim = D;
  p.num_iter = options.num_iter;
  p.ridge = options.ridge_strength;
  p.scale = options.output_scale;
  const auto heads = static_cast<unsigned>(kv_state.size(0) * kv_state.size(1));
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (streamed(p, kv_state.get_device())) {
    launch_gka_decode_streamed<S>(p, static_cast<int>(heads), stream);
    return;
  }
  launch_per_head<S>(p, heads, stream);
}

}  // namespace

size_t gka_decode_shared_bytes(int64_t dim, at::ScalarType solve_type) {
  if (dim < 1 || dim > kMaxDim) return SIZE_MAX;
  const int D = static_cast<int>(dim), columns = D % 2 == 0 ? 2 : 1;
  return solve_type == at::kDouble ? shared_bytes<double>(D, columns) : shared_bytes<float>(D, columns);
}

void launch_gka_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& alpha,
                       const at::Tensor& decay_kk, const at::Tensor& decay_kv, const at::Tensor& kk_state,
                       const at::Tensor& kv_state, const at::Tensor& o, const GkaDecodeOptions& options) {
  const char* op = "gka_decode";
  check_operand(kv_state, op, "kv_state", at::kFloat, 4);
  const int64_t B = kv_state.size(0), H = kv_state.size(1), D = kv_state.size(2);
  PRIME_CHECK(kv_state.size(3) == D && D >= 1 && D <= kMaxDim, op, ": kv_state ", kv_state.sizes(),
              " (square heads of 1 to ", kMaxDim, ")");
  PRIME_CHECK(options.num_iter >= 0, op, ": num_iter ", options.num_iter);
  const at::ScalarType type = q.scalar_type();
  PRIME_CHECK(type == at::kFloat || type == at::kDouble, op, ": q must be fp32 or float64");
  const auto check = [&](const at::Tensor& t, const char* name, at::ScalarType dtype,
                         std::initializer_list<int64_t> sizes) {
    check_input(t, op, name, dtype, sizes, kv_state.device());
  };
  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}})
    check(*t, name, type, {B, H, D});
  for (const auto& [t, name] : {std::pair{&alpha, "alpha"}, std::pair{&decay_kk, "decay_kk"},
                                std::pair{&decay_kv, "decay_kv"}})
    if (t->defined()) check(*t, name, type, {B, H});
  if (options.num_iter > 0) check(kk_state, "kk_state", at::kFloat, {B, H, D, D});
  check(o, "o", at::kFloat, {B, H, D});
  PRIME_CHECK(B * H <= INT_MAX, op, ": B*H = ", B * H, " exceeds the grid");
  if (B * H == 0) return;
  const at::cuda::CUDAGuard guard(kv_state.device());
  if (type == at::kDouble)
    launch_typed<double>(q, k, v, alpha, decay_kk, decay_kv, kk_state, kv_state, o, options);
  else
    launch_typed<float>(q, k, v, alpha, decay_kk, decay_kv, kk_state, kv_state, o, options);
}

}  // namespace prime::kernels::detail
