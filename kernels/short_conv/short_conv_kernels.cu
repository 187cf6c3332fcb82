// CUDA kernels of the fused depthwise causal short conv + SiLU (see short_conv.h for the op,
// short_conv_launch.h for the operands). Memory bound: one thread owns one channel and walks a
// tile of time steps with the last K inputs in registers, so each warp reads and writes 32
// consecutive channels (coalesced) and u is read once plus a K-1 step halo per tile. All sums
// are fp32 whatever the storage type.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/common/cuda_check.cuh"
#include "kernels/short_conv/short_conv_launch.h"

namespace prime::kernels::detail {

namespace {

constexpr int kChannels = 128;  // threads per block, one channel each
constexpr int kTimeTile = 64;   // time steps per thread (the halo costs (K-1)/64 extra reads)
constexpr int kUnroll = 8;      // steps whose loads a thread issues together

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

// The 16-byte path of 2-byte storage types (bf16): a thread owns kVector consecutive channels,
// so each step of u, y, dy and du is one 16-byte load or store per thread (a warp moves 512
// contiguous bytes per access instead of 64). Taken only when C is a multiple of kVector and the
// base addresses are 16-byte aligned (contiguous [B,T,C] rows are then aligned too); the sums,
// their order and the roundings are the scalar kernels', so both paths give the same bits.
constexpr int kVector = 8;          // channels per thread: 8 x 2 bytes
constexpr int kVectorThreads = 64;  // threads per block (512 channels): finer waves of blocks
constexpr int kVectorUnroll = 4;    // steps in flight per thread (u, and dy in the backward)

struct Pack {  // kVector 2-byte values, two to a word, the lower channel in the low half
  uint32_t word[kVector / 2];
};

__device__ __forceinline__ Pack load_pack(const void* p) {
  const uint4 raw = *static_cast<const uint4*>(p);
  return {{raw.x, raw.y, raw.z, raw.w}};
}

__device__ __forceinline__ void store_pack(void* p, const Pack& pack) {
  *static_cast<uint4*>(p) = make_uint4(pack.word[0], pack.word[1], pack.word[2], pack.word[3]);
}

template <typename T>
__device__ __forceinline__ float from_bits(uint32_t bits);
template <>
__device__ __forceinline__ float from_bits<__nv_bfloat16>(uint32_t bits) {
  return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(bits)));
}

template <typename T>
__device__ __forceinline__ uint32_t to_bits(float value);
template <>
__device__ __forceinline__ uint32_t to_bits<__nv_bfloat16>(float value) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(value));
}

template <typename T>
__device__ __forceinline__ void unpack(const Pack& pack, float (&out)[kVector]) {
#pragma unroll
  for (int i = 0; i < kVector / 2; ++i) {
    out[2 * i] = from_bits<T>(pack.word[i] & 0xffffu);
    out[2 * i + 1] = from_bits<T>(pack.word[i] >> 16);
  }
}

template <typename T>
__device__ __forceinline__ Pack pack_of(const float (&in)[kVector]) {
  Pack pack;
#pragma unroll
  for (int i = 0; i < kVector / 2; ++i)
    pack.word[i] = to_bits<T>(in[2 * i]) | (to_bits<T>(in[2 * i + 1]) << 16);
  return pack;
}

// Input step s of channel c in batch row b: u for s >= 0, else the history (zeros without one).
template <typename T, typename S, int K>
__device__ __forceinline__ float input_at(const T* u, const S* history, int64_t b, int s, int c,
                                          int tokens, int channels) {
  if (s >= 0) return load(u + (b * tokens + s) * channels + c);
  if (history == nullptr) return 0.0f;
  return load(history + (b * channels + c) * (K - 1) + (s + K - 1));
}

// Whether step s of batch row b starts a document (never for s < 0: the history precedes t = 0).
__device__ __forceinline__ bool starts_at(const bool* starts, int64_t b, int s, int tokens) {
  return starts != nullptr && s >= 0 && s < tokens && starts[b * tokens + s];
}

// Steps s into the window x (x[j] = step s-K+1+j after the shift). A document start at s zeroes
// the older steps, so no window reaches across it: the same as a zero history at each document.
template <int K>
__device__ __forceinline__ void shift_in(float (&x)[K], float value, bool start) {
#pragma unroll
  for (int j = 0; j < K - 1; ++j) x[j] = start ? 0.0f : x[j + 1];
  x[K - 1] = value;
}

// The window of the K-1 steps before t0 (the halo), reset where a document starts inside it.
template <typename T, typename S, int K>
__device__ __forceinline__ void load_halo(float (&x)[K], const T* u, const S* history,
                                          const bool* starts, int64_t b, int t0, int tokens,
                                          int c, int channels) {
#pragma unroll
  for (int j = 0; j < K; ++j) x[j] = 0.0f;
#pragma unroll
  for (int j = 0; j < K - 1; ++j) {
    const int s = t0 - (K - 1) + j;
    shift_in(x, input_at<T, S, K>(u, history, b, s, c, tokens, channels), starts_at(starts, b, s, tokens));
  }
}

// shift_in for kVector channels (start: one flag per step, the same for every channel).
template <int K>
__device__ __forceinline__ void shift_in_vector(float (&x)[kVector][K], const float (&value)[kVector],
                                                bool start) {
#pragma unroll
  for (int v = 0; v < kVector; ++v) shift_in(x[v], value[v], start);
}

// load_halo for the kVector channels from c0: one 16-byte load per step of u (the history, read
// only by the first tile, stays per channel).
template <typename T, typename S, int K>
__device__ __forceinline__ void load_halo_vector(float (&x)[kVector][K], const T* u,
                                                 const S* history, const bool* starts, int64_t b,
                                                 int t0, int tokens, int c0, int channels) {
#pragma unroll
  for (int v = 0; v < kVector; ++v)
#pragma unroll
    for (int j = 0; j < K; ++j) x[v][j] = 0.0f;
#pragma unroll
  for (int j = 0; j < K - 1; ++j) {
    const int s = t0 - (K - 1) + j;
    float value[kVector];
    if (s >= 0) {
      unpack<T>(load_pack(u + (b * tokens + s) * channels + c0), value);
    } else {
#pragma unroll
      for (int v = 0; v < kVector; ++v)
        value[v] = input_at<T, S, K>(u, history, b, s, c0 + v, tokens, channels);
    }
    shift_in_vector(x, value, starts_at(starts, b, s, tokens));
  }
}

template <typename T, typename S, int K>
__global__ void __launch_bounds__(kChannels)
short_conv_forward_kernel(const T* __restrict__ u, const float* __restrict__ weight,
                          const float* __restrict__ bias, const S* __restrict__ history,
                          const bool* __restrict__ starts, T* __restrict__ y, int tokens,
                          int channels) {
  const int c = blockIdx.x * kChannels + threadIdx.x;
  if (c >= channels) return;
  const int64_t b = blockIdx.z;
  const int t0 = blockIdx.y * kTimeTile, t_end = min(t0 + kTimeTile, tokens);
  float w[K], x[K];  // x[j] = input step t-K+1+j
#pragma unroll
  for (int j = 0; j < K; ++j) w[j] = weight[c * K + j];
  const float bias_c = bias ? bias[c] : 0.0f;
  load_halo<T, S, K>(x, u, history, starts, b, t0, tokens, c, channels);
  for (int base = t0; base < t_end; base += kUnroll) {
    float in[kUnroll];  // loaded together: kUnroll reads in flight per thread
    bool start[kUnroll];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      in[i] = base + i < t_end ? load(u + (b * tokens + base + i) * channels + c) : 0.0f;
      start[i] = base + i < t_end && starts_at(starts, b, base + i, tokens);
    }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      shift_in(x, in[i], start[i]);
      float z = bias_c;
#pragma unroll
      for (int j = 0; j < K; ++j) z = fmaf(w[j], x[j], z);
      if (base + i < t_end) store(y + (b * tokens + base + i) * channels + c, z * sigmoid(z));
    }
  }
}

// The forward kernel on kVector channels per thread (2-byte T, see kVector): the same window,
// sums and rounding per channel, with one 16-byte load and store per step.
template <typename T, typename S, int K, bool kStarts>
__global__ void __launch_bounds__(kVectorThreads, 8)
short_conv_forward_vector_kernel(const T* __restrict__ u, const float* __restrict__ weight,
                                 const float* __restrict__ bias, const S* __restrict__ history,
                                 const bool* __restrict__ starts, T* __restrict__ y, int tokens,
                                 int channels) {
  static_assert(sizeof(T) * kVector == 16, "the vector path moves 16 bytes per access");
  if constexpr (!kStarts) starts = nullptr;  // no flags: the window shifts without selects
  const int c0 = (blockIdx.x * kVectorThreads + threadIdx.x) * kVector;
  if (c0 >= channels) return;  // channels is a multiple of kVector: all kVector are in range
  const int64_t b = blockIdx.z;
  const int t0 = blockIdx.y * kTimeTile, t_end = min(t0 + kTimeTile, tokens);
  float w[kVector][K], x[kVector][K], bias_c[kVector];
#pragma unroll
  for (int v = 0; v < kVector; ++v) {
#pragma unroll
    for (int j = 0; j < K; ++j) w[v][j] = weight[(c0 + v) * K + j];
    bias_c[v] = bias ? bias[c0 + v] : 0.0f;
  }
  load_halo_vector<T, S, K>(x, u, history, starts, b, t0, tokens, c0, channels);
  // Step base + i sits in slot i; a slot is refilled with the step kVectorUnroll later as soon
  // as it is unpacked, so kVectorUnroll 16-byte reads stay in flight while the thread computes.
  Pack in[kVectorUnroll];
  bool start[kVectorUnroll];
#pragma unroll
  for (int i = 0; i < kVectorUnroll; ++i) {
    in[i] = t0 + i < t_end ? load_pack(u + (b * tokens + t0 + i) * channels + c0) : Pack{};
    start[i] = t0 + i < t_end && starts_at(starts, b, t0 + i, tokens);
  }
  for (int base = t0; base < t_end; base += kVectorUnroll) {
#pragma unroll
    for (int i = 0; i < kVectorUnroll; ++i) {
      float value[kVector], out[kVector];
      unpack<T>(in[i], value);
      const bool start_i = start[i];
      const int next = base + kVectorUnroll + i;
      in[i] = next < t_end ? load_pack(u + (b * tokens + next) * channels + c0) : Pack{};
      start[i] = next < t_end && starts_at(starts, b, next, tokens);
      shift_in_vector(x, value, start_i);
#pragma unroll
      for (int v = 0; v < kVector; ++v) {
        float z = bias_c[v];
#pragma unroll
        for (int j = 0; j < K; ++j) z = fmaf(w[v][j], x[v][j], z);
        out[v] = z * sigmoid(z);
      }
      if (base + i < t_end) store_pack(y + (b * tokens + base + i) * channels + c0, pack_of<T>(out));
    }
  }
}

// With gz_t = dy_t silu'(z_t): dx_s = sum_j w_j gz_{s+K-1-j}, dw_j = sum gz_t x_{t-K+1+j},
// dbias = sum gz_t. A thread recomputes z over its tile plus K-1 steps after it (the gz its
// last dx need), keeps the last K gz in registers, and writes dx for its own steps (tile 0 also
// the history's K-1 steps). dw and dbias: one partial per thread, summed by the caller.
template <typename T, typename S, int K>
__global__ void __launch_bounds__(kChannels)
short_conv_backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ u,
                           const float* __restrict__ weight, const float* __restrict__ bias,
                           const S* __restrict__ history, const bool* __restrict__ starts,
                           T* __restrict__ grad_u, S* __restrict__ grad_history,
                           float* __restrict__ partials, int tokens, int channels) {
  const int c = blockIdx.x * kChannels + threadIdx.x;
  if (c >= channels) return;
  const int64_t b = blockIdx.z;
  const int t0 = blockIdx.y * kTimeTile, t_end = min(t0 + kTimeTile, tokens);
  float w[K], x[K], gz[K], dw[K];  // gz[i] = gz at step t-K+1+i
  bool start[K];                   // start[i]: step t-K+1+i starts a document
#pragma unroll
  for (int j = 0; j < K; ++j) {
    w[j] = weight[c * K + j];
    gz[j] = 0.0f;
    dw[j] = 0.0f;
  }
  float dbias = 0.0f;
  const float bias_c = bias ? bias[c] : 0.0f;
  load_halo<T, S, K>(x, u, history, starts, b, t0, tokens, c, channels);
#pragma unroll
  for (int j = 0; j < K; ++j) start[j] = starts_at(starts, b, t0 - K + j, tokens);
  const int emit_from = t0 > 0 ? t0 : -(K - 1);
  const int t_stop = t_end + K - 1, t_load = min(t_stop, tokens);
  for (int base = t0; base < t_stop; base += kUnroll) {
    float in[kUnroll], dy[kUnroll];
    bool start_in[kUnroll];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      const bool inside = base + i < t_load;
      const int64_t index = (b * tokens + base + i) * channels + c;
      in[i] = inside ? load(u + index) : 0.0f;
      dy[i] = inside ? load(grad_y + index) : 0.0f;
      start_in[i] = inside && starts_at(starts, b, base + i, tokens);
    }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      const int t = base + i;
      if (t >= t_stop) break;
      float g = 0.0f;
      if (t < tokens) {
        shift_in(x, in[i], start_in[i]);
        float z = bias_c;
#pragma unroll
        for (int j = 0; j < K; ++j) z = fmaf(w[j], x[j], z);
        const float s = sigmoid(z);
        g = dy[i] * s * (1.0f + z * (1.0f - s));
        if (t < t_end) {
#pragma unroll
          for (int j = 0; j < K; ++j) dw[j] = fmaf(g, x[j], dw[j]);
          dbias += g;
        }
      }
#pragma unroll
      for (int j = 0; j < K - 1; ++j) gz[j] = gz[j + 1];
      gz[K - 1] = g;
#pragma unroll
      for (int j = 0; j < K - 1; ++j) start[j] = start[j + 1];
      start[K - 1] = start_in[i];
      const int step = t - (K - 1);
      if (step < emit_from) continue;
      // x_step reaches gz[d] (step + d) through w[K-1-d] unless a document starts in
      // (step, step + d]: then that window never saw it.
      bool open[K];
      open[0] = true;
#pragma unroll
      for (int d = 1; d < K; ++d) open[d] = open[d - 1] && !start[d];
      float dx = 0.0f;
#pragma unroll
      for (int j = 0; j < K; ++j) dx = fmaf(open[K - 1 - j] ? w[j] : 0.0f, gz[K - 1 - j], dx);
      if (step >= 0)
        store(grad_u + (b * tokens + step) * channels + c, dx);
      else if (grad_history != nullptr)
        store(grad_history + (b * channels + c) * (K - 1) + (step + K - 1), dx);
    }
  }
  const int64_t row = b * gridDim.y + blockIdx.y;
#pragma unroll
  for (int j = 0; j < K; ++j) partials[(row * (K + 1) + j) * channels + c] = dw[j];
  partials[(row * (K + 1) + K) * channels + c] = dbias;
}

// The backward kernel on kVector channels per thread (2-byte T, see kVector): per channel the
// same recurrences and sums in the same order; u, dy and du move as 16-byte packs, the partials
// as float4 (the launcher checks their alignment too).
template <typename T, typename S, int K, bool kStarts>
__global__ void __launch_bounds__(kVectorThreads)
short_conv_backward_vector_kernel(const T* __restrict__ grad_y, const T* __restrict__ u,
                                  const float* __restrict__ weight, const float* __restrict__ bias,
                                  const S* __restrict__ history, const bool* __restrict__ starts,
                                  T* __restrict__ grad_u, S* __restrict__ grad_history,
                                  float* __restrict__ partials, int tokens, int channels) {
  static_assert(sizeof(T) * kVector == 16, "the vector path moves 16 bytes per access");
  if constexpr (!kStarts) starts = nullptr;  // no flags: the window shifts without selects
  const int c0 = (blockIdx.x * kVectorThreads + threadIdx.x) * kVector;
  if (c0 >= channels) return;
  const int64_t b = blockIdx.z;
  const int t0 = blockIdx.y * kTimeTile, t_end = min(t0 + kTimeTile, tokens);
  float w[kVector][K], x[kVector][K], gz[kVector][K], dw[kVector][K], dbias[kVector],
      bias_c[kVector];
  bool start[K];  // start[i]: step t-K+1+i starts a document (the same for every channel)
#pragma unroll
  for (int v = 0; v < kVector; ++v) {
#pragma unroll
    for (int j = 0; j < K; ++j) {
      w[v][j] = weight[(c0 + v) * K + j];
      gz[v][j] = 0.0f;
      dw[v][j] = 0.0f;
    }
    dbias[v] = 0.0f;
    bias_c[v] = bias ? bias[c0 + v] : 0.0f;
  }
  load_halo_vector<T, S, K>(x, u, history, starts, b, t0, tokens, c0, channels);
#pragma unroll
  for (int j = 0; j < K; ++j) start[j] = starts_at(starts, b, t0 - K + j, tokens);
  const int emit_from = t0 > 0 ? t0 : -(K - 1);
  const int t_stop = t_end + K - 1, t_load = min(t_stop, tokens);
  // Slots as in the forward kernel: step base + i in slot i, refilled with the step
  // kVectorUnroll later once unpacked.
  Pack in[kVectorUnroll], dy[kVectorUnroll];
  bool start_in[kVectorUnroll];
#pragma unroll
  for (int i = 0; i < kVectorUnroll; ++i) {
    const bool inside = t0 + i < t_load;
    const int64_t index = (b * tokens + t0 + i) * channels + c0;
    in[i] = inside ? load_pack(u + index) : Pack{};
    dy[i] = inside ? load_pack(grad_y + index) : Pack{};
    start_in[i] = inside && starts_at(starts, b, t0 + i, tokens);
  }
  // One step t in slot i. Interior steps (t < t_end, hence t < tokens) skip the range checks,
  // so the loop over them carries no conditional updates of the register windows.
  const auto process = [&](int i, int t, auto interior) {
    constexpr bool kInterior = decltype(interior)::value;
    float value[kVector], dyv[kVector];
    unpack<T>(in[i], value);
    unpack<T>(dy[i], dyv);
    const bool start_t = start_in[i];
    {
      const int next = t + kVectorUnroll;
      const bool inside = next < t_load;
      const int64_t index = (b * tokens + next) * channels + c0;
      in[i] = inside ? load_pack(u + index) : Pack{};
      dy[i] = inside ? load_pack(grad_y + index) : Pack{};
      start_in[i] = inside && starts_at(starts, b, next, tokens);
    }
    float g[kVector];
#pragma unroll
    for (int v = 0; v < kVector; ++v) g[v] = 0.0f;
    if (kInterior || t < tokens) {
      shift_in_vector(x, value, start_t);
#pragma unroll
      for (int v = 0; v < kVector; ++v) {
        float z = bias_c[v];
#pragma unroll
        for (int j = 0; j < K; ++j) z = fmaf(w[v][j], x[v][j], z);
        const float s = sigmoid(z);
        g[v] = dyv[v] * s * (1.0f + z * (1.0f - s));
        if (kInterior || t < t_end) {
#pragma unroll
          for (int j = 0; j < K; ++j) dw[v][j] = fmaf(g[v], x[v][j], dw[v][j]);
          dbias[v] += g[v];
        }
      }
    }
#pragma unroll
    for (int v = 0; v < kVector; ++v) {
#pragma unroll
      for (int j = 0; j < K - 1; ++j) gz[v][j] = gz[v][j + 1];
      gz[v][K - 1] = g[v];
    }
#pragma unroll
    for (int j = 0; j < K - 1; ++j) start[j] = start[j + 1];
    start[K - 1] = start_t;
    const int step = t - (K - 1);
    if (step < emit_from) return;
    bool open[K];  // as in the scalar kernel
    open[0] = true;
#pragma unroll
    for (int d = 1; d < K; ++d) open[d] = open[d - 1] && !start[d];
    float dx[kVector];
#pragma unroll
    for (int v = 0; v < kVector; ++v) {
      dx[v] = 0.0f;
#pragma unroll
      for (int j = 0; j < K; ++j)
        dx[v] = fmaf(open[K - 1 - j] ? w[v][j] : 0.0f, gz[v][K - 1 - j], dx[v]);
    }
    if (step >= 0) {
      store_pack(grad_u + (b * tokens + step) * channels + c0, pack_of<T>(dx));
    } else if (grad_history != nullptr) {
#pragma unroll
      for (int v = 0; v < kVector; ++v)
        store(grad_history + (b * channels + c0 + v) * (K - 1) + (step + K - 1), dx[v]);
    }
  };
  int base = t0;
  for (; base + kVectorUnroll <= t_end; base += kVectorUnroll) {
#pragma unroll
    for (int i = 0; i < kVectorUnroll; ++i) process(i, base + i, std::true_type{});
  }
  for (; base < t_stop; base += kVectorUnroll) {  // the tile's last steps and the K-1 after it
#pragma unroll
    for (int i = 0; i < kVectorUnroll; ++i) {
      if (base + i >= t_stop) break;
      process(i, base + i, std::false_type{});
    }
  }
  const int64_t row = b * gridDim.y + blockIdx.y;
#pragma unroll
  for (int j = 0; j < K; ++j) {
    float4* out = reinterpret_cast<float4*>(partials + (row * (K + 1) + j) * channels + c0);
#pragma unroll
    for (int q = 0; q < kVector / 4; ++q)
      out[q] = make_float4(dw[4 * q][j], dw[4 * q + 1][j], dw[4 * q + 2][j], dw[4 * q + 3][j]);
  }
  float4* out = reinterpret_cast<float4*>(partials + (row * (K + 1) + K) * channels + c0);
#pragma unroll
  for (int q = 0; q < kVector / 4; ++q)
    out[q] = make_float4(dbias[4 * q], dbias[4 * q + 1], dbias[4 * q + 2], dbias[4 * q + 3]);
}

// One thread per (b, c): reads the K-1 new values (from u, or from the old state when T < K-1)
// before writing any, so the update is safe in place.
template <typename T, typename S, int K>
__global__ void __launch_bounds__(kChannels)
short_conv_state_update_kernel(const T* __restrict__ u, S* __restrict__ state, int tokens,
                               int channels) {
  const int c = blockIdx.x * kChannels + threadIdx.x;
  if (c >= channels) return;
  const int64_t b = blockIdx.y;
  float x[K - 1];
#pragma unroll
  for (int i = 0; i < K - 1; ++i)
    x[i] = input_at<T, S, K>(u, state, b, tokens - (K - 1) + i, c, tokens, channels);
  S* own = state + (b * channels + c) * (K - 1);
#pragma unroll
  for (int i = 0; i < K - 1; ++i) store(own + i, x[i]);
}

// T == 1: the state is read once and written once, together with the output.
template <typename T, typename S, int K>
__global__ void __launch_bounds__(kChannels)
short_conv_decode_kernel(const T* __restrict__ u, const float* __restrict__ weight,
                         const float* __restrict__ bias, S* __restrict__ state,
                         T* __restrict__ y, int channels) {
  const int c = blockIdx.x * kChannels + threadIdx.x;
  if (c >= channels) return;
  const int64_t b = blockIdx.y;
  S* own = state + (b * channels + c) * (K - 1);
  float x[K];
#pragma unroll
  for (int j = 0; j < K - 1; ++j) x[j] = load(own + j);
  x[K - 1] = load(u + b * channels + c);
  float z = bias ? bias[c] : 0.0f;
#pragma unroll
  for (int j = 0; j < K; ++j) z = fmaf(weight[c * K + j], x[j], z);
  store(y + b * channels + c, z * sigmoid(z));
#pragma unroll
  for (int j = 0; j < K - 1; ++j) store(own + j, x[j + 1]);
}

template <typename V>
struct Type {
  using type = V;
};

// Calls body(Type<T>, Type<S>, integral_constant<K>) for u's dtype T, the state's dtype S (fp32
// when there is none) and K in {2, 3, 4}.
template <typename Body>
void dispatch(at::ScalarType u_type, at::ScalarType state_type, int64_t K, const char* op,
              const Body& body) {
  const auto with_k = [&](auto t, auto s) {
    switch (K) {
      case 2: body(t, s, std::integral_constant<int, 2>{}); break;
      case 3: body(t, s, std::integral_constant<int, 3>{}); break;
      case 4: body(t, s, std::integral_constant<int, 4>{}); break;
      default: PRIME_CHECK(false, op, ": kernel size ", K, " is not 2, 3 or 4");
    }
  };
  const auto with_s = [&](auto t) {
    if (state_type == at::kFloat) with_k(t, Type<float>{});
    else with_k(t, Type<__nv_bfloat16>{});
  };
  if (u_type == at::kFloat) with_s(Type<float>{});
  else with_s(Type<__nv_bfloat16>{});
}

void check_storage(const at::Tensor& tensor, const char* op, const char* name, int64_t dims) {
  PRIME_CHECK(tensor.defined(), op, ": ", name, " is undefined");
  const at::ScalarType type = tensor.scalar_type();
  check_operand(tensor, op, name, type == at::kBFloat16 ? at::kBFloat16 : at::kFloat, dims);
}

// Checks u [B,T,C], weight [C,K], bias; returns K.
int64_t check_conv_operands(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                            const char* op) {
  check_storage(u, op, "u", 3);
  check_operand(weight, op, "weight", at::kFloat, 2);
  const int64_t K = weight.size(1);
  PRIME_CHECK(weight.size(0) == u.size(2) && K >= 2 && K <= 4, op, ": weight ", weight.sizes(),
              " for u ", u.sizes(), " (must be [C, K], 2 <= K <= 4)");
  if (bias.defined()) {
    check_operand(bias, op, "bias", at::kFloat, 1);
    PRIME_CHECK(bias.size(0) == u.size(2), op, ": bias ", bias.sizes(), " for u ", u.sizes());
  }
  PRIME_CHECK(u.size(2) <= INT32_MAX && u.size(1) <= INT32_MAX, op, ": u ", u.sizes());
  return K;
}

void check_history(const at::Tensor& history, const at::Tensor& u, int64_t K, const char* op,
                   const char* name) {
  if (!history.defined()) return;
  check_storage(history, op, name, 3);
  PRIME_CHECK(history.size(0) == u.size(0) && history.size(1) == u.size(2) &&
              history.size(2) == K - 1, op, ": ", name, " ", history.sizes(), " for u ", u.sizes(),
              " and K = ", K);
}

void check_starts(const at::Tensor& starts, const at::Tensor& u, const char* op) {
  if (!starts.defined()) return;
  check_operand(starts, op, "starts", at::kBool, 2);
  PRIME_CHECK(starts.size(0) == u.size(0) && starts.size(1) == u.size(1), op, ": starts ",
              starts.sizes(), " for u ", u.sizes());
}

void check_same(const at::Tensor& tensor, const at::Tensor& like, const char* op, const char* name) {
  check_storage(tensor, op, name, like.dim());
  PRIME_CHECK(tensor.sizes() == like.sizes() && tensor.scalar_type() == like.scalar_type(), op,
              ": ", name, " ", tensor.sizes(), " ", tensor.scalar_type(), " must match ",
              like.sizes(), " ", like.scalar_type());
}

template <typename V>
V* data(const at::Tensor& tensor) {
  return tensor.defined() ? static_cast<V*>(tensor.data_ptr()) : nullptr;
}

at::ScalarType state_type(const at::Tensor& state) {
  return state.defined() ? state.scalar_type() : at::kFloat;
}

unsigned channel_blocks(int64_t channels) {
  return static_cast<unsigned>((channels + kChannels - 1) / kChannels);
}

unsigned time_tiles(int64_t tokens) {
  return static_cast<unsigned>((tokens + kTimeTile - 1) / kTimeTile);
}

dim3 tiled_grid(const at::Tensor& u, const char* op) {
  const int64_t batch = u.size(0), tokens = u.size(1);
  PRIME_CHECK(batch <= 65535 && time_tiles(tokens) <= 65535, op, ": u ", u.sizes(),
              " exceeds the grid");
  return dim3(channel_blocks(u.size(2)), time_tiles(tokens), static_cast<unsigned>(batch));
}

// Whether the 16-byte path is legal: a 2-byte storage type, C a multiple of kVector and every
// [B,T,C] operand (and the fp32 partials) starting on a 16-byte boundary. The operands are
// contiguous, so each row of C elements then starts on one too. Otherwise the scalar kernels run.
bool vector_path(const at::Tensor& u, std::initializer_list<const at::Tensor*> operands) {
  if (u.element_size() * kVector != 16 || u.size(2) % kVector != 0) return false;
  for (const at::Tensor* operand : operands)
    if (operand->defined() && reinterpret_cast<uintptr_t>(operand->data_ptr()) % 16 != 0)
      return false;
  return true;
}

// Calls body(std::bool_constant<starts.defined()>): the 16-byte kernels are compiled without
// the per-step flag reads and selects for inputs without document starts.
template <typename Body>
void with_starts(const at::Tensor& starts, const Body& body) {
  if (starts.defined()) body(std::true_type{});
  else body(std::false_type{});
}

dim3 vector_grid(const at::Tensor& u, const char* op) {
  dim3 grid = tiled_grid(u, op);
  grid.x = static_cast<unsigned>((u.size(2) / kVector + kVectorThreads - 1) / kVectorThreads);
  return grid;
}

}  // namespace

int64_t short_conv_partial_rows(int64_t batch, int64_t tokens) { return batch * time_tiles(tokens); }

void launch_short_conv_forward(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& history, const at::Tensor& starts,
                               const at::Tensor& y) {
  const char* op = "short_conv_forward";
  const int64_t K = check_conv_operands(u, weight, bias, op);
  check_history(history, u, K, op, "history");
  check_starts(starts, u, op);
  check_same(y, u, op, "y");
  if (u.numel() == 0) return;
  const at::cuda::CUDAGuard guard(u.device());
  const dim3 grid = tiled_grid(u, op);
  const bool vector = vector_path(u, {&u, &y});
  dispatch(u.scalar_type(), state_type(history), K, op, [&](auto t, auto s, auto k) {
    using T = typename decltype(t)::type;
    using S = typename decltype(s)::type;
    if constexpr (sizeof(T) * kVector == 16) {
      if (vector) {
        with_starts(starts, [&](auto has_starts) {
          short_conv_forward_vector_kernel<T, S, decltype(k)::value, decltype(has_starts)::value>
              <<<vector_grid(u, op), kVectorThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                  data<const T>(u), data<const float>(weight), data<const float>(bias),
                  data<const S>(history), data<const bool>(starts), data<T>(y),
                  static_cast<int>(u.size(1)), static_cast<int>(u.size(2)));
        });
        return;
      }
    }
    short_conv_forward_kernel<T, S, decltype(k)::value>
        <<<grid, kChannels, 0, at::cuda::getCurrentCUDAStream()>>>(
            data<const T>(u), data<const float>(weight), data<const float>(bias),
            data<const S>(history), data<const bool>(starts), data<T>(y), static_cast<int>(u.size(1)),
            static_cast<int>(u.size(2)));
  });
  PRIME_CUDA_CHECK_LAUNCH(vector ? "short_conv_forward_vector_kernel" : "short_conv_forward_kernel");
}

void launch_short_conv_backward(const at::Tensor& grad_y, const at::Tensor& u,
                                const at::Tensor& weight, const at::Tensor& bias,
                                const at::Tensor& history, const at::Tensor& starts,
                                const at::Tensor& grad_u, const at::Tensor& grad_history,
                                const at::Tensor& partials) {
  const char* op = "short_conv_backward";
  const int64_t K = check_conv_operands(u, weight, bias, op);
  check_history(history, u, K, op, "history");
  check_starts(starts, u, op);
  check_same(grad_y, u, op, "grad_y");
  check_same(grad_u, u, op, "grad_u");
  if (grad_history.defined()) {
    PRIME_CHECK(history.defined(), op, ": grad_history without a history");
    check_same(grad_history, history, op, "grad_history");
  }
  check_operand(partials, op, "partials", at::kFloat, 3);
  const int64_t batch = u.size(0), tokens = u.size(1), channels = u.size(2);
  PRIME_CHECK(partials.size(0) == short_conv_partial_rows(batch, tokens) && partials.size(1) == K + 1 &&
              partials.size(2) == channels, op, ": partials ", partials.sizes(), " for u ", u.sizes());
  if (u.numel() == 0) return;
  const at::cuda::CUDAGuard guard(u.device());
  const dim3 grid = tiled_grid(u, op);
  const bool vector = vector_path(u, {&grad_y, &u, &grad_u, &partials});
  dispatch(u.scalar_type(), state_type(history), K, op, [&](auto t, auto s, auto k) {
    using T = typename decltype(t)::type;
    using S = typename decltype(s)::type;
    if constexpr (sizeof(T) * kVector == 16) {
      if (vector) {
        with_starts(starts, [&](auto has_starts) {
          short_conv_backward_vector_kernel<T, S, decltype(k)::value, decltype(has_starts)::value>
              <<<vector_grid(u, op), kVectorThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                  data<const T>(grad_y), data<const T>(u), data<const float>(weight),
                  data<const float>(bias), data<const S>(history), data<const bool>(starts),
                  data<T>(grad_u), data<S>(grad_history), data<float>(partials),
                  static_cast<int>(tokens), static_cast<int>(channels));
        });
        return;
      }
    }
    short_conv_backward_kernel<T, S, decltype(k)::value>
        <<<grid, kChannels, 0, at::cuda::getCurrentCUDAStream()>>>(
            data<const T>(grad_y), data<const T>(u), data<const float>(weight),
            data<const float>(bias), data<const S>(history), data<const bool>(starts), data<T>(grad_u),
            data<S>(grad_history), data<float>(partials), static_cast<int>(tokens),
            static_cast<int>(channels));
  });
  PRIME_CUDA_CHECK_LAUNCH(vector ? "short_conv_backward_vector_kernel" : "short_conv_backward_kernel");
}

void launch_short_conv_state_update(const at::Tensor& u, const at::Tensor& state) {
  const char* op = "short_conv_state_update";
  check_storage(u, op, "u", 3);
  check_storage(state, op, "state", 3);
  const int64_t K = state.size(2) + 1;
  PRIME_CHECK(K >= 2 && K <= 4, op, ": state ", state.sizes(), " (K - 1 must be 1, 2 or 3)");
  check_history(state, u, K, op, "state");
  if (state.numel() == 0) return;
  PRIME_CHECK(u.size(0) <= 65535 && u.size(1) <= INT32_MAX && u.size(2) <= INT32_MAX, op, ": u ",
              u.sizes());
  const at::cuda::CUDAGuard guard(u.device());
  const dim3 grid(channel_blocks(u.size(2)), static_cast<unsigned>(u.size(0)));
  dispatch(u.scalar_type(), state.scalar_type(), K, op, [&](auto t, auto s, auto k) {
    using T = typename decltype(t)::type;
    using S = typename decltype(s)::type;
    short_conv_state_update_kernel<T, S, decltype(k)::value>
        <<<grid, kChannels, 0, at::cuda::getCurrentCUDAStream()>>>(
            data<const T>(u), data<S>(state), static_cast<int>(u.size(1)),
            static_cast<int>(u.size(2)));
  });
  PRIME_CUDA_CHECK_LAUNCH("short_conv_state_update_kernel");
}

void launch_short_conv_decode(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& state, const at::Tensor& y) {
  const char* op = "short_conv_decode";
  const int64_t K = check_conv_operands(u, weight, bias, op);
  PRIME_CHECK(u.size(1) == 1, op, ": u ", u.sizes(), " must hold one step");
  PRIME_CHECK(state.defined(), op, ": state is undefined");
  check_history(state, u, K, op, "state");
  check_same(y, u, op, "y");
  if (u.numel() == 0) return;
  PRIME_CHECK(u.size(0) <= 65535, op, ": batch ", u.size(0), " exceeds the grid");
  const at::cuda::CUDAGuard guard(u.device());
  const dim3 grid(channel_blocks(u.size(2)), static_cast<unsigned>(u.size(0)));
  dispatch(u.scalar_type(), state.scalar_type(), K, op, [&](auto t, auto s, auto k) {
    using T = typename decltype(t)::type;
    using S = typename decltype(s)::type;
    short_conv_decode_kernel<T, S, decltype(k)::value>
        <<<grid, kChannels, 0, at::cuda::getCurrentCUDAStream()>>>(
            data<const T>(u), data<const float>(weight), data<const float>(bias), data<S>(state),
            data<T>(y), static_cast<int>(u.size(2)));
  });
  PRIME_CUDA_CHECK_LAUNCH("short_conv_decode_kernel");
}

}  // namespace prime::kernels::detail
