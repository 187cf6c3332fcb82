// CUDA kernel of the decode projection y_i = x W_iᵀ (+ bias_i) for 1..4 rows of x and 1..4 weights
// sharing x (see linear_decode.h for the ops, linear_decode_launch.h for the operands). Bound by
// reading the weights once: N·K elements against a few KB of x.
//
// Layout of the work: the rows of all the weights are one row space, cut into units of kRows
// consecutive rows of one weight (a unit never spans two weights); a warp computes a unit for
// every row of x. In the gated form (the MLP's gate and up) a unit is row r of gate and row r of
// up, and the warp writes silu(gate) * up. Its lanes walk the K dimension in 16-byte packs (8
// bf16/fp16 or 4 fp32), a warp access covering 512 consecutive bytes of a W row; each trip issues
// kPacksInFlight raw 16-byte loads per lane (8 KB per warp) before using any of them, and W
// bypasses L1 (read once). x packs come through L1 (__ldg: every warp of a multiprocessor reads the
// same few KB) and each one meets the kRows W packs it multiplies. Sums are fp32, in two chains per
// (row of W, row of x) so a lane is not one long chain of dependent multiply-adds; a shuffle sum
// over the warp ends the row, the bias is added in fp32 and the result rounded once. 3 rows of x
// run the 4-row instance with the last row read twice and not stored.
//
// The grid: either one warp per unit (as many blocks as that takes: the blocks after the first
// wave start as earlier ones end), or one wave (the blocks the multiprocessors hold at once) whose
// warps take units round robin, each warp the same number of units up to one, so every warp starts
// at once and the streams end together instead of in a last, partial wave.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/linear_decode/linear_decode_launch.h"

namespace prime::kernels::detail {

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * kWarp;
// Weights per launch.
constexpr int kMaxGroup = 4;
// 16-byte loads of W per lane per trip: 8 KB in flight per warp.
constexpr int kPacksInFlight = 16;
// Blocks per multiprocessor the registers must allow: 4 (16 warps, 128 registers: 128 KB of W in
// flight per SM, several times what covers the memory latency at 4.8 TB/s); 3 for fp32, whose
// wider x packs spilled a few registers at 128.
template <typename T>
constexpr int kMinBlocks = sizeof(T) == 4 ? 3 : 4;
// Warps per multiprocessor below which a warp takes one row instead of two (small N: the k/v
// projections of the 8B shape, N = 1024, get 1024 warps instead of 512).
constexpr int kWarpsPerSmForTwoRows = 8;

// The element types: fp32 of the words of a 16-byte pack, of one element, and the rounding back.
template <typename T>
struct Element;

template <>
struct Element<float> {
  static constexpr int kPerPack = 4;
  __device__ static float from_float(float value) { return value; }
  __device__ static float to_float(float value) { return value; }
};

// bf16 is the high half of an fp32: a shift or a mask per element.
template <>
struct Element<__nv_bfloat16> {
  static constexpr int kPerPack = 8;
  __device__ static float2 pair(uint32_t word) {
    return make_float2(__uint_as_float(word << 16), __uint_as_float(word & 0xffff0000u));
  }
  __device__ static __nv_bfloat16 from_float(float value) { return __float2bfloat16_rn(value); }
  __device__ static float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }
};

template <>
struct Element<__half> {
  static constexpr int kPerPack = 8;
  __device__ static float2 pair(uint32_t word) { return __half22float2(*reinterpret_cast<const __half2*>(&word)); }
  __device__ static __half from_float(float value) { return __float2half_rn(value); }
  __device__ static float to_float(__half value) { return __half2float(value); }
};

// value rounded to T and back: what a tensor of T holds between two torch ops.
template <typename T>
__device__ __forceinline__ float round_to(float value) {
  return Element<T>::to_float(Element<T>::from_float(value));
}

// A 16-byte pack as kPerPack floats (a 16-bit type's word holds two elements, the first in its
// low half).
template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float (&v)[Element<T>::kPerPack]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (Element<T>::kPerPack == 4) {
      v[j] = __uint_as_float(words[j]);
    } else {
      const float2 pair = Element<T>::pair(words[j]);
      v[2 * j] = pair.x;
      v[2 * j + 1] = pair.y;
    }
  }
}

// 16 bytes of W, read once: not kept in L1 (which holds x), not through the coherent path.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// acc[r][xr] += W pack of row r · x pack of row xr, for the x packs at `pack`.
template <typename T, int kRows, int kXRows>
__device__ __forceinline__ void accumulate(const uint4 (&w)[kRows], const uint4* const (&x_row)[kXRows],
                                           int pack, float (&acc)[kRows][kXRows]) {
  constexpr int kWidth = Element<T>::kPerPack;
  float wf[kRows][kWidth];
#pragma unroll
  for (int r = 0; r < kRows; ++r) unpack<T>(w[r], wf[r]);
#pragma unroll
  for (int xr = 0; xr < kXRows; ++xr) {
    float xf[kWidth];
    unpack<T>(__ldg(x_row[xr] + pack), xf);
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kWidth; ++c) acc[r][xr] = fmaf(wf[r][c], xf[c], acc[r][xr]);
  }
}

// One trip's W packs of a lane: kUnroll packs of each of the kRows rows (kPacksInFlight in all).
template <int kRows>
using Trip = uint4[kPacksInFlight / kRows][kRows];

// The trip at pack `base` (a whole trip: base + kTrip <= packs).
template <int kRows>
__device__ __forceinline__ void load_trip(const uint4* const (&w_row)[kRows], int base, int lane, Trip<kRows>& w) {
#pragma unroll
  for (int u = 0; u < kPacksInFlight / kRows; ++u)
#pragma unroll
    for (int r = 0; r < kRows; ++r) w[u][r] = load_streaming(w_row[r] + base + lane + u * kWarp);
}

// sum[r][xr] = W row r · x row xr (packs 16-byte packs each), in every lane of the warp. kHead: the
// first trip's packs are `head`, loaded by the caller (before the kernel waits: pdl.cuh); the sums
// are formed in the same order either way.
template <typename T, int kRows, int kXRows, bool kHead>
__device__ __forceinline__ void dot_rows(const uint4* const (&w_row)[kRows], const uint4* const (&x_row)[kXRows],
                                         int packs, int lane, const Trip<kRows>& head, float (&sum)[kRows][kXRows]) {
  constexpr int kUnroll = kPacksInFlight / kRows;  // packs per row per lane per trip
  constexpr int kTrip = kUnroll * kWarp;
  float acc[2][kRows][kXRows];  // two chains: even and odd packs of a trip
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int xr = 0; xr < kXRows; ++xr) acc[h][r][xr] = 0.f;

  int base = 0;
  if constexpr (kHead) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) accumulate<T, kRows, kXRows>(head[u], x_row, lane + u * kWarp, acc[u % 2]);
    base = kTrip;
  }
  for (; base + kTrip <= packs; base += kTrip) {
    Trip<kRows> w;
    load_trip<kRows>(w_row, base, lane, w);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      accumulate<T, kRows, kXRows>(w[u], x_row, base + lane + u * kWarp, acc[u % 2]);
  }
  if (base < packs) {  // the last, partial trip: fewer than kTrip packs left
    uint4 w[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int pack = base + lane + u * kWarp;
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        w[u][r] = pack < packs ? load_streaming(w_row[r] + pack) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int pack = base + lane + u * kWarp;
      if (pack < packs) accumulate<T, kRows, kXRows>(w[u], x_row, pack, acc[u % 2]);
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int xr = 0; xr < kXRows; ++xr) {
      float total = acc[0][r][xr] + acc[1][r][xr];
#pragma unroll
      for (int offset = kWarp / 2; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
      sum[r][xr] = total;  // the butterfly leaves the total in every lane
    }
  }
}

// The weights of one launch (a kernel parameter). Entries past `count` are never selected:
// their unit_end is INT_MAX.
template <typename T>
struct Group {
  const uint4* weight[kMaxGroup];  // [features, packs]
  const T* bias[kMaxGroup];        // [features] or null
  T* out[kMaxGroup];               // [x_rows, features]
  int features[kMaxGroup];
  int unit_end[kMaxGroup];  // units of weights 0..i together
};

// values[g] with g known only at run time, by selects (no local-memory copy of the parameter).
template <typename V>
__device__ __forceinline__ V pick(const V (&values)[kMaxGroup], int g) {
  V value = values[0];
#pragma unroll
  for (int i = 1; i < kMaxGroup; ++i)
    if (g == i) value = values[i];
  return value;
}

// Where unit `unit` lies: its weight g, its first row, that weight's row count, and the kRows
// W rows it reads (rows past the weight's end read its last row again and are not stored). Plain:
// unit u is rows [kRows·(u − first unit of its weight), + kRows) of one weight. Gated (kRows = 2,
// weights 0 and 1 = gate and up, both [features, packs]): unit u is row u of both.
template <typename T, int kRows, bool kGated>
struct Unit {
  const uint4* w_row[kRows];
  int g = 0, first = 0, features = 0;

  __device__ __forceinline__ Unit(const Group<T>& group, int unit, int packs) {
    first = unit;
    features = group.features[0];
    if constexpr (kGated) {
      w_row[0] = group.weight[0] + static_cast<int64_t>(unit) * packs;
      w_row[1] = group.weight[1] + static_cast<int64_t>(unit) * packs;
    } else {
#pragma unroll
      for (int i = 0; i + 1 < kMaxGroup; ++i) g += unit >= group.unit_end[i] ? 1 : 0;
      int begin = 0;
#pragma unroll
      for (int i = 0; i + 1 < kMaxGroup; ++i)
        if (g == i + 1) begin = group.unit_end[i];
      first = (unit - begin) * kRows;
      features = pick(group.features, g);
      const uint4* weight = pick(group.weight, g);
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        w_row[r] = weight + static_cast<int64_t>(min(first + r, features - 1)) * packs;
    }
  }
};

// Unit `unit` (Unit above) for every row of x, written to out[g] with bias[g], or in the gated form
// out[0][xr, u] = silu(gate) * up rounded as the torch ops round. kHead: `head` holds the unit's
// first trip.
template <typename T, int kRows, int kXRows, bool kGated, bool kHead>
__device__ __forceinline__ void compute_unit(const Group<T>& group, int unit, const uint4* const (&x_row)[kXRows],
                                             int packs, int x_rows, int lane, const Trip<kRows>& head) {
  const Unit<T, kRows, kGated> at(group, unit, packs);
  const int g = at.g, first = at.first, features = at.features;
  float sum[kRows][kXRows];
  dot_rows<T, kRows, kXRows, kHead>(at.w_row, x_row, packs, lane, head, sum);

  if constexpr (kGated) {
    // Lane xr stores row xr: silu(to_T(gate)) to T, times to_T(up), to T (a product of two
    // 16-bit values is exact in fp32: one rounding, as the torch product's).
    T* out = group.out[0];
#pragma unroll
    for (int xr = 0; xr < kXRows; ++xr) {
      if (lane == xr && xr < x_rows) {
        const float gate = round_to<T>(sum[0][xr]), up = round_to<T>(sum[1][xr]);
        const float activated = round_to<T>(gate / (1.0f + expf(-gate)));
        out[static_cast<int64_t>(xr) * features + first] = Element<T>::from_float(activated * up);
      }
    }
  } else {
    const T* bias = pick(group.bias, g);
    T* out = pick(group.out, g);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int xr = 0; xr < kXRows; ++xr) {
        // Every lane holds every sum: lane r * kXRows + xr stores this one.
        const int feature = first + r;
        if (lane == r * kXRows + xr && xr < x_rows && feature < features) {
          float value = sum[r][xr];
          if (bias != nullptr) value += Element<T>::to_float(bias[feature]);
          out[static_cast<int64_t>(xr) * features + feature] = Element<T>::from_float(value);
        }
      }
    }
  }
}

// Units [0, units) over the warps of the grid, round robin (one unit per warp when the grid has a
// warp per unit). W is written by no kernel, so each warp loads its first unit's first trip before
// waiting on the kernels before it (pdl.cuh): that stream starts while they finish.
template <typename T, int kRows, int kXRows, bool kGated>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    linear_decode_kernel(const uint4* __restrict__ x, const Group<T> group, int packs, int x_rows, int units) {
  static_assert(!kGated || kRows == 2, "the gated form pairs a row of gate with a row of up");
  constexpr int kTrip = kPacksInFlight / kRows * kWarp;
  const int lane = threadIdx.x % kWarp;
  const int warps = gridDim.x * kWarpsPerBlock;
  const int first_unit = blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
  // unit is the same in every lane: whole warps only, no shuffle loses a lane. The head is loaded
  // for one row of x only: with more rows its registers would spill.
  const bool head_loaded = kXRows == 1 && first_unit < units && packs >= kTrip;
  Trip<kRows> head;
  if (head_loaded) load_trip<kRows>(Unit<T, kRows, kGated>(group, first_unit, packs).w_row, 0, lane, head);
  pdl_wait();  // x is the kernel before's output; out may still be read by an earlier one
  pdl_launch_dependents();
  const uint4* x_row[kXRows];
#pragma unroll
  for (int xr = 0; xr < kXRows; ++xr) x_row[xr] = x + static_cast<int64_t>(min(xr, x_rows - 1)) * packs;

  int unit = first_unit;
  if (head_loaded) {
    compute_unit<T, kRows, kXRows, kGated, true>(group, unit, x_row, packs, x_rows, lane, head);
    unit += warps;
  }
  for (; unit < units; unit += warps)
    compute_unit<T, kRows, kXRows, kGated, false>(group, unit, x_row, packs, x_rows, lane, head);
}

bool aligned16(const at::Tensor& tensor) { return reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0; }

// Blocks of this instance a multiprocessor holds at once (its registers set it), asked once.
template <typename T, int kRows, int kXRows, bool kGated>
int resident_blocks_per_sm() {
  static const int blocks = [] {
    int count = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&count, linear_decode_kernel<T, kRows, kXRows, kGated>,
                                                      kThreads, 0) != cudaSuccess ||
        count < 1) {
      (void)cudaGetLastError();  // a failed query leaves no error for the next launch check
      count = kMinBlocks<T>;
    }
    return count;
  }();
  return blocks;
}

template <typename T, int kRows, int kXRows, bool kGated>
void launch_instance(const uint4* x, const Group<T>& group, int packs, int x_rows, int units, bool one_wave) {
  int64_t warps = units;
  if (one_wave) {
    // The fewest round-robin trips one wave allows, then the fewest warps that make them: every
    // warp takes `trips` units, or one fewer.
    const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const int64_t wave = sms * resident_blocks_per_sm<T, kRows, kXRows, kGated>() * kWarpsPerBlock;
    const int64_t trips = (units + wave - 1) / wave;
    warps = (units + trips - 1) / trips;
  }
  const int blocks = static_cast<int>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
  launch_kernel("linear_decode_kernel", linear_decode_kernel<T, kRows, kXRows, kGated>, blocks, kThreads, 0,
                at::cuda::getCurrentCUDAStream(), x, group, packs, x_rows, units);
}

template <typename T, int kRows, bool kGated>
void launch_rows(const at::Tensor& x, const Group<T>& group, int packs, int units, bool one_wave) {
  const uint4* x_data = static_cast<const uint4*>(x.data_ptr());
  const int x_rows = static_cast<int>(x.size(0));
  if (x_rows == 1)
    launch_instance<T, kRows, 1, kGated>(x_data, group, packs, x_rows, units, one_wave);
  else if (x_rows == 2)
    launch_instance<T, kRows, 2, kGated>(x_data, group, packs, x_rows, units, one_wave);
  else
    launch_instance<T, kRows, 4, kGated>(x_data, group, packs, x_rows, units, one_wave);
}

// An empty group: every unit_end INT_MAX, nothing selected.
template <typename T>
Group<T> empty_group() {
  Group<T> group{};
  for (int g = 0; g < kMaxGroup; ++g) {
    group.weight[g] = nullptr;
    group.bias[g] = nullptr;
    group.out[g] = nullptr;
    group.features[g] = 1;
    group.unit_end[g] = INT_MAX;
  }
  return group;
}

template <typename T>
void launch_typed(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::TensorList outs,
                  bool one_wave) {
  const int packs = static_cast<int>(weights[0].size(1) / Element<T>::kPerPack);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t rows = 0;
  for (const at::Tensor& weight : weights) rows += weight.size(0);
  // Two rows per warp halve the x re-reads per W pack, once there are warps enough to keep
  // kWarpsPerSmForTwoRows per multiprocessor.
  const bool two_rows = rows >= 2LL * kWarpsPerSmForTwoRows * sms;
  const int per_unit = two_rows ? 2 : 1;
  Group<T> group = empty_group<T>();
  int64_t units = 0;
  for (size_t g = 0; g < weights.size(); ++g) {
    const int64_t features = weights[g].size(0);
    group.weight[g] = static_cast<const uint4*>(weights[g].data_ptr());
    group.bias[g] = biases[g].defined() ? static_cast<const T*>(biases[g].data_ptr()) : nullptr;
    group.out[g] = static_cast<T*>(outs[g].data_ptr());
    group.features[g] = static_cast<int>(features);
    units += (features + per_unit - 1) / per_unit;
    group.unit_end[g] = static_cast<int>(units);
  }
  if (two_rows)
    launch_rows<T, 2, false>(x, group, packs, static_cast<int>(units), one_wave);
  else
    launch_rows<T, 1, false>(x, group, packs, static_cast<int>(units), one_wave);
}

// The checks shared by both launchers: x [rows, K] of a served dtype, 1..4 rows.
void check_x(const at::Tensor& x, const char* op) {
  const at::ScalarType type = x.scalar_type();
  PRIME_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf, op,
              ": x must be fp32, bf16 or fp16, got ", c10::toString(type));
  check_operand(x, op, "x", type, 2);
  const int64_t rows = x.size(0), K = x.size(1);
  const int64_t per_pack = 16 / static_cast<int64_t>(x.element_size());
  PRIME_CHECK(rows >= 1 && rows <= 4, op, ": x has ", rows, " rows, 1 to 4 are served");
  PRIME_CHECK(K >= 1 && K % per_pack == 0 && K / per_pack <= INT_MAX, op, ": x ", x.sizes(),
              " (K a multiple of ", per_pack, ")");
  PRIME_CHECK(aligned16(x), op, ": x must start 16-byte aligned");
}

// weight [N, K] of x's dtype and device, 16-byte aligned; out [rows, N]; bias undefined or [N].
void check_weight(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& out,
                  const char* op) {
  const at::ScalarType type = x.scalar_type();
  check_operand(weight, op, "weight", type, 2);
  check_operand(out, op, "out", type, 2);
  if (bias.defined()) check_operand(bias, op, "bias", type, 1);
  const int64_t N = weight.size(0);
  PRIME_CHECK(weight.size(1) == x.size(1), op, ": x ", x.sizes(), " and weight ", weight.sizes());
  PRIME_CHECK(N >= 1 && N <= INT_MAX, op, ": weight ", weight.sizes(), " exceeds the kernel's indexing");
  PRIME_CHECK(out.size(0) == x.size(0) && out.size(1) == N, op, ": out is ", out.sizes(), ", want [", x.size(0),
              ", ", N, "]");
  PRIME_CHECK(!bias.defined() || bias.size(0) == N, op, ": bias ", bias.sizes(), " for ", N, " features");
  PRIME_CHECK(aligned16(weight), op, ": weight must start 16-byte aligned");
  for (const at::Tensor* t : {&weight, &bias, &out})
    PRIME_CHECK(!t->defined() || t->device() == x.device(), op, ": operands on ", t->device(), " and ",
                x.device());
}

}  // namespace

void launch_linear_decode(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::TensorList outs,
                          bool one_wave) {
  const char* op = "linear_decode";
  check_x(x, op);
  PRIME_CHECK(!weights.empty() && weights.size() <= static_cast<size_t>(kMaxGroup), op, ": ", weights.size(),
              " weights, 1 to ", kMaxGroup, " are served");
  PRIME_CHECK(biases.size() == weights.size() && outs.size() == weights.size(), op, ": ", weights.size(),
              " weights, ", biases.size(), " biases, ", outs.size(), " outputs");
  int64_t rows = 0;
  for (size_t g = 0; g < weights.size(); ++g) {
    check_weight(x, weights[g], biases[g], outs[g], op);
    rows += weights[g].size(0);
  }
  PRIME_CHECK(rows <= INT_MAX, op, ": ", rows, " rows of W in one launch exceed the kernel's indexing");
  const at::cuda::CUDAGuard guard(x.device());
  const at::ScalarType type = x.scalar_type();
  if (type == at::kFloat) launch_typed<float>(x, weights, biases, outs, one_wave);
  else if (type == at::kBFloat16) launch_typed<__nv_bfloat16>(x, weights, biases, outs, one_wave);
  else launch_typed<__half>(x, weights, biases, outs, one_wave);
}

void launch_linear_decode_gated_silu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                                     const at::Tensor& out, bool one_wave) {
  const char* op = "linear_decode (gated silu)";
  check_x(x, op);
  check_weight(x, gate, at::Tensor(), out, op);
  check_weight(x, up, at::Tensor(), out, op);
  const at::cuda::CUDAGuard guard(x.device());
  const int units = static_cast<int>(gate.size(0));
  auto launch = [&](auto element) {
    using T = decltype(element);
    Group<T> group = empty_group<T>();
    group.weight[0] = static_cast<const uint4*>(gate.data_ptr());
    group.weight[1] = static_cast<const uint4*>(up.data_ptr());
    group.out[0] = static_cast<T*>(out.data_ptr());
    group.features[0] = group.features[1] = units;
    group.unit_end[0] = units;
    const int packs = static_cast<int>(gate.size(1) / Element<T>::kPerPack);
    launch_rows<T, 2, true>(x, group, packs, units, one_wave);
  };
  const at::ScalarType type = x.scalar_type();
  if (type == at::kFloat) launch(float{});
  else if (type == at::kBFloat16) launch(__nv_bfloat16{});
  else launch(__half{});
}

}  // namespace prime::kernels::detail
