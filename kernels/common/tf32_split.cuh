// The hi/lo split of the 3xTF32 products (fp32 accuracy on TF32 tensor cores: v = hi + lo, both
// TF32, a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi), with the rounding done in two integer operations.
//
// cvt.rna.tf32.f32 (round to nearest, ties away from zero) compiles on sm_90 to a check for
// infinity or NaN, a predicated add of half a TF32 ulp and a mask: with the select around it,
// about four instructions per conversion, two conversions per element. Those checks were a fifth
// of the GKA reverse sweep's instructions (ncu, kernels/README.md gka_solve v4.2). Adding half an
// ulp (0x1000) to the bit pattern and clearing the 13 low bits rounds the magnitude the same way,
// carries into the exponent where the mantissa overflows, and keeps infinities and NaNs of the
// quiet kind (inputs here are finite). The tensor cores read only a TF32 operand's top 19 bits,
// so the low part needs the add alone; the high part is masked because lo = v - hi needs its value.
#pragma once

#include <cstdint>

namespace prime::kernels::detail {

// Bits of v rounded to TF32, low 13 bits cleared (cvt.rna.tf32.f32 for finite v).
__device__ __forceinline__ uint32_t tf32_round_bits(uint32_t v) { return (v + 0x1000u) & 0xffffe000u; }

// hi = tf32(v), lo = tf32(v - hi) (v - hi is exact in fp32); lo's 13 low bits are left for the
// tensor cores to ignore.
__device__ __forceinline__ void split_tf32_bits(uint32_t v, uint32_t& hi, uint32_t& lo) {
  hi = tf32_round_bits(v);
  lo = __float_as_uint(__uint_as_float(v) - __uint_as_float(hi)) + 0x1000u;
}

}  // namespace prime::kernels::detail
