// Shared by the RMSNorm kernels (rms_norm_kernels.cu: forward; rms_norm_backward_kernels.cu):
// a storage type's bits and its fp32 conversions, 16-byte packs of a row in fp32 registers, and
// the constants and helpers by which each launcher maps rows to threads (a lane group inside a warp
// for short rows, a block for long ones).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <ATen/ATen.h>

#include <cstdint>

namespace prime::kernels::detail::rms_norm_rows {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
constexpr int kHeldPacks = 4;          // packs per thread kept in registers
constexpr int kGroupThreads = 128;     // block size when rows go to lane groups
constexpr int kMaxGroupPacks = kWarp * kHeldPacks;  // longest row (in packs) a warp takes

// A storage type's bits in memory and its conversions (to fp32 exact; from fp32 rounding to
// nearest even, as ATen's casts). The kernel moves bits (uint32 or uint16) and computes in fp32.
template <typename T>
struct Storage;

template <>
struct Storage<float> {
  using Bits = uint32_t;
  __device__ static float to_float(uint32_t bits) { return __uint_as_float(bits); }
  __device__ static uint32_t from_float(float value) { return __float_as_uint(value); }
};

template <>
struct Storage<__nv_bfloat16> {
  using Bits = uint16_t;
  __device__ static float to_float(uint32_t bits) { return __uint_as_float(bits << 16); }
  __device__ static uint32_t from_float(float value) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(value));
  }
};

template <>
struct Storage<__half> {
  using Bits = uint16_t;
  __device__ static float to_float(uint32_t bits) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
  }
  __device__ static uint32_t from_float(float value) { return __half_as_ushort(__float2half_rn(value)); }
};

template <typename T>
using Bits = typename Storage<T>::Bits;

// Width consecutive elements in fp32 registers; one 16-byte access when Width > 1 (Width =
// 16 / sizeof(T)), one element otherwise.
template <int Width>
struct Pack {
  float v[Width];
};

__device__ __forceinline__ uint32_t word(const uint4& raw, int j) {
  return j == 0 ? raw.x : j == 1 ? raw.y : j == 2 ? raw.z : raw.w;  // j is unrolled: no select
}

template <typename T, int Width>
__device__ __forceinline__ Pack<Width> load_pack(const Bits<T>* p) {
  Pack<Width> pack;
  if constexpr (Width == 1) {
    pack.v[0] = Storage<T>::to_float(*p);
  } else {
    static_assert(Width * sizeof(Bits<T>) == sizeof(uint4), "a pack is 16 bytes");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    constexpr int kPerWord = 4 / sizeof(Bits<T>);
#pragma unroll
    for (int c = 0; c < Width; ++c) {
      const uint32_t w = word(raw, c / kPerWord);
      pack.v[c] = Storage<T>::to_float(kPerWord == 1 ? w : (w >> (16 * (c % kPerWord))) & 0xffffu);
    }
  }
  return pack;
}

// Stores to_T(pack).
template <typename T, int Width>
__device__ __forceinline__ void store_pack(Bits<T>* p, const Pack<Width>& pack) {
  if constexpr (Width == 1) {
    *p = static_cast<Bits<T>>(Storage<T>::from_float(pack.v[0]));
  } else {
    constexpr int kPerWord = 4 / sizeof(Bits<T>);
    uint32_t words[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      words[j] = Storage<T>::from_float(pack.v[j * kPerWord]);
      if constexpr (kPerWord == 2) words[j] |= Storage<T>::from_float(pack.v[j * 2 + 1]) << 16;
    }
    // One 16-byte store (written as PTX: the compiler split the uint4 assignment into four).
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(words[0]), "r"(words[1]),
                 "r"(words[2]), "r"(words[3])
                 : "memory");
  }
}

// fp32 of to_T(value): a rounding to the storage type, back in fp32.
template <typename T>
__device__ __forceinline__ float rounded(float value) {
  return Storage<T>::to_float(Storage<T>::from_float(value));
}

inline int round_up(int value, int multiple) { return (value + multiple - 1) / multiple * multiple; }

inline int next_power_of_two(int value) {
  int power = 1;
  while (power < value) power *= 2;
  return power;
}

inline bool aligned16(const at::Tensor& tensor) {
  return !tensor.defined() || reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0;
}

}  // namespace prime::kernels::detail::rms_norm_rows
