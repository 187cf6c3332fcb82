// What GKA's two decode-step kernels share (gka_decode_kernels.cu: a CTA per head;
// gka_decode_streamed_kernels.cu: a CTA per multiprocessor walking heads with the next head's states
// copied in while it solves): the operands, the block sum, and the paired loads and stores.
#pragma once

#include <cstdint>

namespace prime::kernels::detail {

constexpr int kGkaThreads = 512;

template <typename S>
struct GkaStep {
  const S* q;         // [B, H, D]
  const S* k;         // [B, H, D]
  const S* v;         // [B, H, D]
  const S* alpha;     // [B, H] or null (alpha = 1)
  const S* decay_kk;  // [B, H] log decay of H, or null
  const S* decay_kv;  // [B, H] log decay of S, or null
  float* kk;          // [B, H, D, D] or null (num_iter == 0)
  float* kv;          // [B, H, D, D]
  float* o;           // [B, H, D]
  int dim, num_iter;
  double ridge, scale;
};

// The sum of one value per thread over the block (every thread gets it). `scratch` holds
// kGkaThreads / 32 values; the caller's next use of it must follow a barrier.
template <typename S>
__device__ __forceinline__ S gka_block_sum(S value, S* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = value;
  __syncthreads();
  S total = 0;
#pragma unroll
  for (int w = 0; w < kGkaThreads / 32; ++w) total += scratch[w];
  return total;
}

// kC consecutive values at p (aligned to kC of them): one load or store.
template <int kC, typename T>
__device__ __forceinline__ void load_values(const T* p, T (&out)[kC]) {
  if constexpr (kC == 2 && sizeof(T) == 8) {
    const double2 pair = *reinterpret_cast<const double2*>(p);
    out[0] = pair.x, out[1] = pair.y;
  } else if constexpr (kC == 2) {
    const float2 pair = *reinterpret_cast<const float2*>(p);
    out[0] = pair.x, out[1] = pair.y;
  } else {
    out[0] = *p;
  }
}

template <int kC>
__device__ __forceinline__ void store_floats(float* p, const float (&values)[kC]) {
  if constexpr (kC == 2) *reinterpret_cast<float2*>(p) = make_float2(values[0], values[1]);
  else *p = values[0];
}

// The Chebyshev iteration's scalars from ||H||_F^2 (as the torch form's solve: f floored, lambda = r f,
// eta = 2 / (2 lambda + f), the omega recurrence's contraction (spread^2 with spread = 1 / (2 (2 r + 1)))).
template <typename S>
struct GkaSolveScalars {
  S eta, one_minus_eta_lambda, contraction;
  __device__ __forceinline__ GkaSolveScalars(S squares, double ridge) {
    const S frob = sqrt(max(squares, S(1e-30)));
    const S lambda = frob * static_cast<S>(ridge);
    eta = S(2) / (S(2) * lambda + frob);
    const S spread = S(1) / (S(2) * (S(2) * static_cast<S>(ridge) + S(1)));
    contraction = spread * spread;
    one_minus_eta_lambda = S(1) - eta * lambda;
  }
  // x' from this element's x, x_prev, eta q and (H x): base + (1 - eta lambda) omega x - eta omega (H x), with
  // base = x_prev + omega (eta q - x_prev), or eta q omega at the first step.
  __device__ __forceinline__ S next(int iteration, S omega, S eta_q, S x_prev, S x, S hx) const {
    const S base = iteration == 0 ? eta_q * omega : x_prev + omega * (eta_q - x_prev);
    return base + (one_minus_eta_lambda * omega) * x - (eta * omega) * hx;
  }
};

// The Chebyshev weights omega_1 .. omega_n into table (omega_{i+1} = 1 / (1 - contraction omega_i) from
// omega = 2): they depend on r alone, so a block tables them once for all its heads and iterations.
template <typename S>
__device__ __forceinline__ void table_omegas(S* table, int num_iter, double ridge) {
  const GkaSolveScalars<S> scalars(S(1), ridge);
  S omega = 2;
  for (int iteration = 0; iteration < num_iter; ++iteration) {
    omega = S(1) / (S(1) - scalars.contraction * omega);
    table[iteration] = omega;
  }
}

}  // namespace prime::kernels::detail
