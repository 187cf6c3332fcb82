// Device pieces ssd_chunk's fp32 kernels (ssd_chunk_kernels.cu) and its bf16 forward
// (ssd_forward_bf16_kernels.cu) share: the deltas read through their strides and the chunk's
// Gamma_t = sum_{s<=t} delta_s A_h, summed in float64 (a difference of two fp32 prefix sums would
// lose digits once |Gamma| is large; every exponent formed from it is <= 0).
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail::ssd_common {

// delta [B,T,H] read through its strides.
// delta [B,T,H] with its strides. scales_inputs false: delta drives the decay only (Gamma = sum of
// delta A) and scales no input row (gated linear attention: GKA's state walks; the bf16 walk's
// factors only).
struct DeltaView {
  const float* data = nullptr;
  long long s0 = 0, s1 = 0, s2 = 0;
  bool scales_inputs = true;
  __device__ __forceinline__ float at(int b, int t, int h) const { return data[b * s0 + t * s1 + h * s2]; }
};

inline DeltaView make_delta_view(const at::Tensor& delta, bool scales_inputs = true) {
  DeltaView view;
  view.data = delta.data_ptr<float>();
  view.s0 = delta.stride(0), view.s1 = delta.stride(1), view.s2 = delta.stride(2);
  view.scales_inputs = scales_inputs;
  return view;
}

// Lane l of a warp: the chunk's deltas l and l + 32 (0 at or past T).
__device__ __forceinline__ float2 chunk_deltas(const DeltaView& delta, int b, int h, int t0, int T) {
  const int lane = threadIdx.x % 32;
  return make_float2(t0 + lane < T ? delta.at(b, t0 + lane, h) : 0.0f,
                     t0 + lane + 32 < T ? delta.at(b, t0 + lane + 32, h) : 0.0f);
}

// One warp, each lane with its chunk_deltas d: dl[t] = delta_t and gamma[t] = Gamma_t (fp32
// products delta_t a summed in float64; an inclusive shuffle scan over each half of the chunk).
__device__ __forceinline__ void scan_gamma(float2 d, float a, double* gamma, float* dl) {
  const int lane = threadIdx.x % 32;
  dl[lane] = d.x;
  dl[lane + 32] = d.y;
  double s0 = static_cast<double>(d.x * a), s1 = static_cast<double>(d.y * a);
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const double n0 = __shfl_up_sync(0xffffffffu, s0, offset);
    const double n1 = __shfl_up_sync(0xffffffffu, s1, offset);
    if (lane >= offset) s0 += n0, s1 += n1;
  }
  const double first_half = __shfl_sync(0xffffffffu, s0, 31);
  gamma[lane] = s0;
  gamma[lane + 32] = s1 + first_half;
}

// The chunk's deltas and Gamma by warp 0 (the other threads return at once). The caller
// synchronises afterwards.
__device__ __forceinline__ void chunk_gamma(const DeltaView& delta, const float* __restrict__ A, int b, int h,
                                            int t0, int T, double* gamma, float* dl) {
  if (threadIdx.x >= 32) return;
  scan_gamma(chunk_deltas(delta, b, h, t0, T), A[h], gamma, dl);
}

}  // namespace prime::kernels::detail::ssd_common
