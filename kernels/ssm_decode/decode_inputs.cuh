// Device helpers of the fused decode-input kernels (GDN's, Mamba-2's and GKA's step fronts, a warp
// per head of a segment of the token's projection): one channel's short conv over the cache's
// history plus SiLU, a head's row of them (GKA's), a warp's sum, the warp's head, the repeated
// heads' stores; and the launchers' check. The conv sums as the
// short_conv decode kernel does (fmaf over the K taps, oldest first, from the bias) and its SiLU is
// z * sigmoid(z), so the fused and unfused paths give the same conv outputs.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>
#include <initializer_list>

#include "kernels/common/cuda_check.cuh"

namespace prime::kernels::detail {

// Host: a contiguous tensor of `type` and these sizes on `device`, else an InternalError naming
// the op and the operand.
inline void check_input(const at::Tensor& tensor, const char* op, const char* name, at::ScalarType type,
                        std::initializer_list<int64_t> sizes, const at::Device& device) {
  check_operand(tensor, op, name, type, static_cast<int64_t>(sizes.size()));
  PRIME_CHECK(tensor.sizes() == at::IntArrayRef(sizes), op, ": ", name, " is ", tensor.sizes(), ", expected ",
              at::IntArrayRef(sizes));
  PRIME_CHECK(tensor.device() == device, op, ": ", name, " on ", tensor.device(), ", the others on ", device);
}

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }

// silu(bias + sum_j weight[j] x_j) over x = [history[0..K-2], u]; history then holds x[1..K-1].
template <typename T, int K>
__device__ __forceinline__ float conv_silu_step(float* history, const T* weight, const T* bias, float u) {
  float x[K];
#pragma unroll
  for (int j = 0; j < K - 1; ++j) x[j] = history[j];
  x[K - 1] = u;
  float z = bias != nullptr ? to_float(*bias) : 0.0f;
#pragma unroll
  for (int j = 0; j < K; ++j) z = fmaf(to_float(weight[j]), x[j], z);
#pragma unroll
  for (int j = 0; j < K - 1; ++j) history[j] = x[j + 1];
  return z * (1.0f / (1.0f + expf(-z)));
}

// The sum of `value` over the warp, in every lane.
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Blocks of 4 warps; a warp per head of a segment, then a warp per 32 gate items (b, h). Lanes
// hold a head's channels lane, lane + 32, ...: at most kInputsPerLane each (D <= 256).
constexpr int kInputsWarpsPerBlock = 4;
constexpr int kInputsThreads = kInputsWarpsPerBlock * 32;
constexpr int kInputsPerLane = 8;

// Host: the grid of `head_warps` warps followed by a warp per 32 of `gate_items`.
inline dim3 inputs_grid(int64_t head_warps, int64_t gate_items, const char* op) {
  const int64_t warps = head_warps + (gate_items + 31) / 32;
  PRIME_CHECK(warps <= INT_MAX / 32, op, ": ", head_warps, " head warps and ", gate_items,
              " gate items exceed the grid");
  return dim3(static_cast<unsigned>((warps + kInputsWarpsPerBlock - 1) / kInputsWarpsPerBlock));
}

// Device: this thread's warp in the grid.
__device__ __forceinline__ int inputs_warp() {
  return static_cast<int>(blockIdx.x) * kInputsWarpsPerBlock + static_cast<int>(threadIdx.x) / 32;
}

// A warp's head row of a token's [B, C] projection `raw`: lane l's y[i] is channel l + 32 i of
// head `head` at batch row b, the conv + SiLU over the cache's history where `weight` is given
// (K > 0; bias optional), else no_conv(u) of the projected value u; zero past `dim`. Returns the
// lane's sum of y^2.
template <typename T, int K, typename NoConv>
__device__ __forceinline__ float head_row(const T* raw, const T* weight, const T* bias, float* history,
                                          int64_t channels, int b, int head, int dim, int lane,
                                          float (&y)[kInputsPerLane], const NoConv& no_conv) {
  float squares = 0.0f;
#pragma unroll
  for (int i = 0; i < kInputsPerLane; ++i) {
    const int d = lane + i * 32;
    y[i] = 0.0f;
    if (d >= dim) continue;
    const int64_t c = static_cast<int64_t>(head) * dim + d;
    const float u = to_float(raw[b * channels + c]);
    if constexpr (K > 0) {
      y[i] = weight != nullptr ? conv_silu_step<T, K>(history + (b * channels + c) * (K - 1), weight + c * K,
                                                      bias != nullptr ? bias + c : nullptr, u)
                               : no_conv(u);
    } else {
      y[i] = no_conv(u);
    }
    squares = fmaf(y[i], y[i], squares);
  }
  return squares;
}

// Where the warp of index `index` among a batch row's head warps falls, the heads of three
// segments in a row (counts h0, h1, then the rest): its segment (0, 1, 2) and head within it.
__device__ __forceinline__ void locate_head(int index, int h0, int h1, int& segment, int& head) {
  segment = index < h0 ? 0 : (index < h0 + h1 ? 1 : 2);
  head = index - (segment == 0 ? 0 : (segment == 1 ? h0 : h0 + h1));
}

// y * factor into out [B, heads, dim] at row b, in each of the `groups` consecutive heads that
// `head` serves (head * groups + g), lane-consecutive channels (coalesced stores).
__device__ __forceinline__ void store_repeated(float* out, const float (&y)[kInputsPerLane], float factor, int b,
                                               int heads, int head, int groups, int dim, int lane) {
  for (int g = 0; g < groups; ++g) {
    float* row = out + (static_cast<int64_t>(b) * heads + static_cast<int64_t>(head) * groups + g) * dim;
#pragma unroll
    for (int i = 0; i < kInputsPerLane; ++i) {
      const int d = lane + i * 32;
      if (d < dim) row[d] = y[i] * factor;
    }
  }
}

// Host: a per-head parameter (A_log, dt_bias) as the kernels read it: fp32 [H] (models keep these
// in fp32; another dtype is converted, one more launch).
inline at::Tensor head_parameter_fp32(const at::Tensor& t, const char* op, const char* name, int64_t heads,
                                      const at::Device& device) {
  PRIME_CHECK(t.defined(), op, ": ", name, " is undefined");
  const at::Tensor fp32 = t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
  check_input(fp32, op, name, at::kFloat, {heads}, device);
  return fp32;
}

// softplus as at::softplus (beta 1, threshold 20): linear above 20.
__device__ __forceinline__ float softplus(float value) { return value > 20.0f ? value : log1pf(expf(value)); }

}  // namespace prime::kernels::detail
