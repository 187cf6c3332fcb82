// CUDA kernel of the fused rotary embedding (see rope.h for the op, rope_launch.h for the
// operands). Memory bound: q and k are read once and their rotated copies written once; the
// fp32 cos/sin rows are shared by every head of a token and come from L1/L2. A thread owns V
// elements of a head's first half and the V matching ones of its second half (the pair that
// rotate_half mixes), with 16-byte accesses where the rows allow (V = 8 for bf16/fp16, 4 for
// fp32) and single elements at any strides otherwise. Products and sums use __fmul_rn /
// __fadd_rn: the torch form rounds each op separately, and a contracted FMA would not.
//
// The decode step's fused form (rope_norm_kernel) first applies q_norm and k_norm (RMSNorm over
// each head, weight [D]) and then rotates, one launch instead of three: a group of lanes owns a
// head (one 16-byte pack a lane, as kernels/rms_norm's head norm), sums its squares by shuffles,
// normalises and rounds as model::rms_norm does, swaps its pack with the lane holding the other
// half of the rotated pair (a shuffle) and rotates as above.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/rope/rope_launch.h"

namespace prime::kernels::detail {

namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 512;  // leaves the compiler 128 registers a thread
constexpr int kBlockThreads = 256;  // tokens packed per block when one token needs fewer threads
constexpr int kMaxGridRows = 65535;  // gridDim.y

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// Round-to-nearest-even, as the torch form's final .to(dtype).
template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else return v;
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// V consecutive elements at p (one access: p aligned to the pack when V > 1).
template <typename T, int V>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[V]) {
  const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = to_float(pack.v[j]);
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[V]) {
  Pack<T, V> pack;
#pragma unroll
  for (int j = 0; j < V; ++j) pack.v[j] = from_float<T>(in[j]);
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

// V consecutive fp32 angles at p (float4 accesses when V is a multiple of 4: p 16-byte aligned).
template <int V>
__device__ __forceinline__ void load_angles(const float* p, float (&out)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int j = 0; j < V; j += 4) {
      const float4 value = *reinterpret_cast<const float4*>(p + j);
      out[j] = value.x, out[j + 1] = value.y, out[j + 2] = value.z, out[j + 3] = value.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = p[j];
  }
}

struct Operand {
  const void* x;
  void* out;  // contiguous [B,T,heads,D]
  int64_t stride_b, stride_t, stride_h, stride_d;
  int heads;
};

struct Params {
  Operand q, k;
  const float* cos;
  const float* sin;
  int64_t angle_stride_b;  // T*D, or 0 when the tables are shared by the batch
  int tokens, steps, half, chunks;  // B*T, T, D/2, D/2 / V
};

// Thread (x, y) of block (bx, by): token bx * blockDim.y + y, and slot by * blockDim.x + x of
// that token's (Hq + Hkv) * chunks slots: head slot / chunks (q heads first, then k heads),
// elements chunk*V .. chunk*V+V-1 of its first half and the same of its second half.
template <typename T, int V>
__global__ void __launch_bounds__(kMaxThreads) rope_kernel(const Params p) {
  pdl_wait();  // q and k come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  const int token = blockIdx.x * blockDim.y + threadIdx.y;
  const int slot = blockIdx.y * blockDim.x + threadIdx.x;
  const int head_slot = slot / p.chunks;
  if (token >= p.tokens || head_slot >= p.q.heads + p.k.heads) return;
  const int chunk = slot - head_slot * p.chunks;
  const bool is_q = head_slot < p.q.heads;
  const int head = is_q ? head_slot : head_slot - p.q.heads;
  const int heads = is_q ? p.q.heads : p.k.heads;
  const int b = token / p.steps, t = token - b * p.steps;
  const int half = p.half, d = chunk * V;

  const T* x = static_cast<const T*>(is_q ? p.q.x : p.k.x);
  const int64_t stride_d = is_q ? p.q.stride_d : p.k.stride_d;
  const T* row = x + b * (is_q ? p.q.stride_b : p.k.stride_b) + t * (is_q ? p.q.stride_t : p.k.stride_t) +
                 head * (is_q ? p.q.stride_h : p.k.stride_h);
  float x1[V], x2[V];
  if constexpr (V == 1) {
    x1[0] = to_float(row[d * stride_d]);
    x2[0] = to_float(row[(d + half) * stride_d]);
  } else {
    load_pack<T, V>(row + d, x1);
    load_pack<T, V>(row + d + half, x2);
  }
  const int64_t angle_offset = b * p.angle_stride_b + static_cast<int64_t>(t) * 2 * half + d;
  float c1[V], c2[V], s1[V], s2[V];
  load_angles<V>(p.cos + angle_offset, c1);
  load_angles<V>(p.cos + angle_offset + half, c2);
  load_angles<V>(p.sin + angle_offset, s1);
  load_angles<V>(p.sin + angle_offset + half, s2);

  // x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1): each op rounded as torch rounds it.
  float y1[V], y2[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    y1[j] = __fadd_rn(__fmul_rn(x1[j], c1[j]), __fmul_rn(-x2[j], s1[j]));
    y2[j] = __fadd_rn(__fmul_rn(x2[j], c2[j]), __fmul_rn(x1[j], s2[j]));
  }
  T* out = static_cast<T*>(is_q ? p.q.out : p.k.out) + (static_cast<int64_t>(token) * heads + head) * 2 * half;
  store_pack<T, V>(out + d, y1);
  store_pack<T, V>(out + d + half, y2);
}

// ---- launch helpers -------------------------------------------------------------------------

// A dimension of size 1 is never stepped along: its stride is whatever the view left there.
int64_t step_stride(const at::Tensor& x, int64_t dim) { return x.size(dim) == 1 ? 0 : x.stride(dim); }

Operand operand(const at::Tensor& x, const at::Tensor& out) {
  return {x.data_ptr(), out.data_ptr(), step_stride(x, 0), step_stride(x, 1), step_stride(x, 2),
          step_stride(x, 3), static_cast<int>(x.size(2))};
}

bool aligned_16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// 16-byte packs need unit element strides, every row start on a pack (strides multiples of V,
// bases 16-byte aligned) and halves that split into packs; the angle rows likewise for float4.
bool packs_fit(const at::Tensor& x, int64_t vector) {
  return x.stride(3) == 1 && step_stride(x, 0) % vector == 0 && step_stride(x, 1) % vector == 0 &&
         step_stride(x, 2) % vector == 0 && aligned_16(x);
}

template <typename T>
void launch_typed(const Params& params, bool wide, const at::Device& device) {
  constexpr int kWide = 16 / sizeof(T);
  const auto launch = [&](auto width) {
    constexpr int kV = decltype(width)::value;
    Params p = params;
    p.chunks = p.half / kV;
    const int64_t slots = static_cast<int64_t>(p.q.heads + p.k.heads) * p.chunks;
    const int64_t split = (slots + kMaxThreads - 1) / kMaxThreads;
    PRIME_CHECK(split <= kMaxGridRows, "rope: ", slots, " threads per token exceed the grid");
    const int threads = static_cast<int>(((slots + split - 1) / split + kWarp - 1) / kWarp * kWarp);
    const int tokens_per_block = split == 1 ? std::max(1, kBlockThreads / threads) : 1;
    const dim3 block(threads, tokens_per_block);
    const dim3 grid(static_cast<unsigned>((p.tokens + tokens_per_block - 1) / tokens_per_block),
                    static_cast<unsigned>(split));
    launch_kernel("rope_kernel", rope_kernel<T, kV>, grid, block, 0, at::cuda::getCurrentCUDAStream(device.index()),
                  p);
  };
  if (wide) launch(std::integral_constant<int, kWide>{});
  else launch(std::integral_constant<int, 1>{});
}

void check_rotated(const at::Tensor& x, const at::Tensor& out, const char* name, const char* out_name,
                   const at::Tensor& q) {
  const char* op = "rope";
  PRIME_CHECK(x.defined() && x.is_cuda() && x.dim() == 4, op, ": ", name, " must be a 4-d CUDA tensor");
  PRIME_CHECK(x.scalar_type() == q.scalar_type(), op, ": ", name, " is ", x.scalar_type(), ", q ", q.scalar_type());
  PRIME_CHECK(x.device() == q.device(), op, ": ", name, " on ", x.device(), ", q on ", q.device());
  PRIME_CHECK(x.size(0) == q.size(0) && x.size(1) == q.size(1) && x.size(3) == q.size(3), op, ": ", name, " ",
              x.sizes(), " and q ", q.sizes(), " differ in B, T or D");
  check_operand(out, op, out_name, x.scalar_type(), 4);
  PRIME_CHECK(out.sizes() == x.sizes() && out.device() == q.device(), op, ": ", out_name, " is ", out.sizes(),
              " on ", out.device(), ", expected ", x.sizes(), " on ", q.device());
}

void check_angles(const at::Tensor& table, const char* name, const at::Tensor& q) {
  const char* op = "rope";
  check_operand(table, op, name, at::kFloat, 4);
  PRIME_CHECK((table.size(0) == 1 || table.size(0) == q.size(0)) && table.size(1) == q.size(1) &&
                  table.size(2) == 1 && table.size(3) == q.size(3) && table.device() == q.device(),
              op, ": ", name, " is ", table.sizes(), " on ", table.device(), ", expected [1 or B, T, 1, D] of q ",
              q.sizes(), " on ", q.device());
}

// ---- q_norm + k_norm + rotation ----------------------------------------------------------------

// A storage type's 16-byte pack as kWidth floats, and back (rounded to nearest even).
template <typename T>
constexpr int kPackWidth = 16 / static_cast<int>(sizeof(T));

template <typename T>
__device__ __forceinline__ void load_wide(const T* p, float (&out)[kPackWidth<T>]) {
  load_pack<T, kPackWidth<T>>(p, out);
}

// fp32 of to_T(value).
template <typename T>
__device__ __forceinline__ float rounded(float value) {
  return to_float(from_float<T>(value));
}

struct NormOperand {
  const void* x;       // [B,T,heads,D], unit stride along D, rows on 16 bytes
  const void* weight;  // [D], contiguous
  void* out;           // contiguous [B,T,heads,D]
  int64_t stride_b, stride_t, stride_h;
  int heads;
};

struct NormParams {
  NormOperand q, k;
  const float* cos;
  const float* sin;
  int64_t angle_stride_b;  // T*D, or 0 when the tables are shared by the batch
  int rows, steps;         // B*T*(Hq + Hkv) heads in all, T
  int packs, lanes;        // D / width (even, <= 32); lanes per head: the power of two >= packs
  float eps, inverse_dim;
};

// Groups of p.lanes lanes (a power of two <= 32), one head each: row r is token r / (Hq + Hkv),
// head slot r % (Hq + Hkv) (q heads first). Lane l < packs owns pack l of the head. The norm as
// kernels/rms_norm's lane groups compute it (each lane's squares in element order, then xor
// shuffles over the group, rsqrt(sum * 1/D + eps)), then y = to_T(x * scale) and
// n = to_T(fp32(w) * y), then the rotation of n as rope_kernel computes it: the lane with pack l of
// the first half trades its n with the lane holding pack l of the second half.
template <typename T>
__global__ void __launch_bounds__(128) rope_norm_kernel(const NormParams p) {
  pdl_wait();  // q and k come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  constexpr int W = kPackWidth<T>;
  const int lanes = p.lanes;
  const int lane = threadIdx.x % lanes;
  const int row = blockIdx.x * (blockDim.x / lanes) + threadIdx.x / lanes;
  const bool active = row < p.rows && lane < p.packs;  // idle lanes still join the shuffles
  const int slots = p.q.heads + p.k.heads;
  const int token = row / slots, slot = row - token * slots;
  const bool is_q = slot < p.q.heads;
  const int head = is_q ? slot : slot - p.q.heads;
  const int b = token / p.steps, t = token - b * p.steps;
  const int d = lane * W;
  // The operand's fields one by one (selects, not a reference into the parameters).
  const T* source = static_cast<const T*>(is_q ? p.q.x : p.k.x) + b * (is_q ? p.q.stride_b : p.k.stride_b) +
                    t * (is_q ? p.q.stride_t : p.k.stride_t) + head * (is_q ? p.q.stride_h : p.k.stride_h);
  const T* weight = static_cast<const T*>(is_q ? p.q.weight : p.k.weight);

  float x[W];
  float squares = 0.f;
  if (active) {
    load_wide<T>(source + d, x);
#pragma unroll
    for (int c = 0; c < W; ++c) squares += x[c] * x[c];
  }
  for (int offset = lanes / 2; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  const float scale = rsqrtf(squares * p.inverse_dim + p.eps);

  float n[W], w[W];
  if (active) load_wide<T>(weight + d, w);
#pragma unroll
  for (int c = 0; c < W; ++c) n[c] = active ? rounded<T>(w[c] * rounded<T>(x[c] * scale)) : 0.f;

  // The other half's pack of the pair: lane l of the first half and l + packs/2 trade.
  const int half_packs = p.packs / 2;
  const int partner = lane < half_packs ? lane + half_packs : lane >= p.packs ? lane : lane - half_packs;
  float other[W];
#pragma unroll
  for (int c = 0; c < W; ++c) other[c] = __shfl_sync(0xffffffffu, n[c], partner, lanes);
  if (!active) return;

  const bool first_half = lane < half_packs;
  const int64_t angle_offset = b * p.angle_stride_b + static_cast<int64_t>(t) * p.packs * W + d;
  float c[W], s[W];
  load_angles<W>(p.cos + angle_offset, c);
  load_angles<W>(p.sin + angle_offset, s);
  // First half: n cos + (-other) sin; second half: n cos + other sin (rotate_half = (-x2, x1)).
  float y[W];
#pragma unroll
  for (int j = 0; j < W; ++j)
    y[j] = __fadd_rn(__fmul_rn(n[j], c[j]), __fmul_rn(first_half ? -other[j] : other[j], s[j]));
  T* out = static_cast<T*>(is_q ? p.q.out : p.k.out) +
           (static_cast<int64_t>(token) * (is_q ? p.q.heads : p.k.heads) + head) * p.packs * W;
  store_pack<T, W>(out + d, y);
}

NormOperand norm_operand(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& out) {
  return {x.data_ptr(), weight.data_ptr(), out.data_ptr(), step_stride(x, 0), step_stride(x, 1), step_stride(x, 2),
          static_cast<int>(x.size(2))};
}

}  // namespace

void launch_rope_norm(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_weight, const at::Tensor& k_weight,
                      double eps, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& q_out,
                      const at::Tensor& k_out) {
  const char* op = "rope (with q/k norm)";
  check_rotated(q, q_out, "q", "q_out", q);
  check_rotated(k, k_out, "k", "k_out", q);
  check_angles(cos, "cos", q);
  check_angles(sin, "sin", q);
  PRIME_CHECK(cos.size(0) == sin.size(0), op, ": cos ", cos.sizes(), " and sin ", sin.sizes(), " differ");
  check_operand(q_weight, op, "q_weight", q.scalar_type(), 1);
  check_operand(k_weight, op, "k_weight", q.scalar_type(), 1);
  const int64_t B = q.size(0), T = q.size(1), D = q.size(3);
  const int64_t width = 16 / q.element_size();
  PRIME_CHECK(q_weight.size(0) == D && k_weight.size(0) == D && q_weight.device() == q.device() &&
                  k_weight.device() == q.device(),
              op, ": weights ", q_weight.sizes(), " and ", k_weight.sizes(), " for heads of ", D);
  PRIME_CHECK(D % (2 * width) == 0 && D / width <= kWarp, op, ": head dim ", D, " must be an even number of ",
              width, "-element packs, at most ", kWarp);
  PRIME_CHECK(packs_fit(q, width) && packs_fit(k, width) && aligned_16(q_out) && aligned_16(k_out) &&
                  aligned_16(q_weight) && aligned_16(k_weight) && aligned_16(cos) && aligned_16(sin),
              op, ": rows must start on 16 bytes with unit element strides");
  PRIME_CHECK(B * T * (q.size(2) + k.size(2)) <= INT_MAX, op, ": q ", q.sizes(), " and k ", k.sizes(),
              " exceed the grid");
  if (B * T == 0 || q.size(2) + k.size(2) == 0) return;
  const at::cuda::CUDAGuard guard(q.device());
  NormParams p{};
  p.q = norm_operand(q, q_weight, q_out);
  p.k = norm_operand(k, k_weight, k_out);
  p.cos = static_cast<const float*>(cos.data_ptr());
  p.sin = static_cast<const float*>(sin.data_ptr());
  p.angle_stride_b = cos.size(0) == 1 ? 0 : T * D;
  p.rows = static_cast<int>(B * T * (q.size(2) + k.size(2)));
  p.steps = static_cast<int>(T);
  p.packs = static_cast<int>(D / width);
  p.lanes = 1;
  while (p.lanes < p.packs) p.lanes *= 2;
  p.eps = static_cast<float>(eps);
  p.inverse_dim = 1.f / static_cast<float>(D);
  constexpr int kThreads = 128;
  const int rows_per_block = kThreads / p.lanes;
  const int blocks = (p.rows + rows_per_block - 1) / rows_per_block;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(q.device().index());
  switch (q.scalar_type()) {
    case at::kFloat: launch_kernel("rope_norm_kernel", rope_norm_kernel<float>, blocks, kThreads, 0, stream, p); break;
    case at::kBFloat16:
      launch_kernel("rope_norm_kernel", rope_norm_kernel<__nv_bfloat16>, blocks, kThreads, 0, stream, p);
      break;
    case at::kHalf: launch_kernel("rope_norm_kernel", rope_norm_kernel<__half>, blocks, kThreads, 0, stream, p); break;
    default: PRIME_CHECK(false, op, ": q must be fp32, bf16 or fp16, got ", q.scalar_type());
  }
}

void launch_rope(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin,
                 const at::Tensor& q_out, const at::Tensor& k_out) {
  check_rotated(q, q_out, "q", "q_out", q);
  check_rotated(k, k_out, "k", "k_out", q);
  check_angles(cos, "cos", q);
  check_angles(sin, "sin", q);
  PRIME_CHECK(cos.size(0) == sin.size(0), "rope: cos ", cos.sizes(), " and sin ", sin.sizes(), " differ");
  const int64_t B = q.size(0), T = q.size(1), D = q.size(3);
  PRIME_CHECK(D > 0 && D % 2 == 0, "rope: head dim ", D, " must be even");
  PRIME_CHECK(B * T <= INT_MAX && (q.size(2) + k.size(2)) * D <= INT_MAX, "rope: q ", q.sizes(), " and k ",
              k.sizes(), " exceed the grid");
  if (B * T == 0 || q.size(2) + k.size(2) == 0) return;
  const at::cuda::CUDAGuard guard(q.device());
  Params p{};
  p.q = operand(q, q_out);
  p.k = operand(k, k_out);
  p.cos = static_cast<const float*>(cos.data_ptr());
  p.sin = static_cast<const float*>(sin.data_ptr());
  p.angle_stride_b = cos.size(0) == 1 ? 0 : T * D;
  p.tokens = static_cast<int>(B * T);
  p.steps = static_cast<int>(T);
  p.half = static_cast<int>(D / 2);
  const int64_t vector = 16 / q.element_size();
  const bool wide = p.half % vector == 0 && packs_fit(q, vector) && packs_fit(k, vector) && aligned_16(q_out) &&
                    aligned_16(k_out) && aligned_16(cos) && aligned_16(sin);
  switch (q.scalar_type()) {
    case at::kFloat: launch_typed<float>(p, wide, q.device()); break;
    case at::kBFloat16: launch_typed<__nv_bfloat16>(p, wide, q.device()); break;
    case at::kHalf: launch_typed<__half>(p, wide, q.device()); break;
    default: PRIME_CHECK(false, "rope: q must be fp32, bf16 or fp16, got ", q.scalar_type());
  }
}

}  // namespace prime::kernels::detail
