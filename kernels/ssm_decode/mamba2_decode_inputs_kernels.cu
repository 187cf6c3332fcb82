// CUDA kernel of Mamba-2's decode inputs (decode_inputs.h). The in_proj output of a token is
// [z | x | B | C | dt]; x, B and C are one conv's channels [x | B | C]. A warp per (b, head of x,
// B or C): lane l holds the head's channels l, l + 32, ... (D <= 256: at most 8 each), so B's and
// C's RMS norms are one butterfly each; the conv and SiLU follow per channel, and each output row
// is written to every head it serves. After those warps, a warp per 32 (b, h) pairs computes
// delta (and, at b = 0, A). Latency bound, like GDN's (gdn_decode_inputs_kernels.cu).
//
// The arithmetic follows the unfused path's: the norm x * rsqrt(mean x^2 + eps) times the weight
// (model::rms_normalize, then the weight), the conv and SiLU as the short_conv decode kernel
// (decode_inputs.cuh), delta = softplus(dt + dt_bias) as at::softplus, A = -exp(A_log).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/ssm_decode/decode_inputs.cuh"
#include "kernels/ssm_decode/ssm_decode.h"
#include "kernels/ssm_decode/ssm_decode_launch.h"

namespace prime::kernels::detail {

namespace {

constexpr int kWarp = 32;
static_assert(kInputsPerLane * kWarp == kDecodeMaxDim, "a lane holds a head's channels lane + 32 i");

template <typename T>
struct Params {
  const T* projection;  // [B, width]
  const T* weight;      // [C, K], C = (2 Hkv + Hq) D
  const T* bias;        // [C] or null
  const T* B_norm;      // [D] or null (then C_norm is null too)
  const T* C_norm;      // [D] or null
  const float* A_log;   // [H]
  const float* dt_bias;  // [H]
  float* history;       // [B, C, K-1], updated in place
  float* x;             // [B, H, D]
  float* Bm;            // [B, H, D]
  float* Cm;            // [B, H, D]
  float* delta;         // [B, H]
  float* A;             // [H]
  int batch, q_heads, kv_heads, dim, width;
  float eps;
  int head_warps;  // B * (2 Hkv + Hq)
};

template <typename T>
__device__ __forceinline__ void gates(const Params<T>& p, int index) {
  if (index >= p.batch * p.q_heads) return;
  const int b = index / p.q_heads, h = index % p.q_heads;
  const T* dt = p.projection + static_cast<int64_t>(b) * p.width + 2 * (p.q_heads + p.kv_heads) * p.dim;
  p.delta[index] = softplus(to_float(dt[h]) + p.dt_bias[h]);
  if (b == 0) p.A[h] = -expf(p.A_log[h]);
}

template <typename T, int K>
__global__ void __launch_bounds__(kInputsThreads) mamba2_decode_inputs_kernel(const Params<T> p) {
  pdl_wait();  // the step's inputs come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  const int warp = inputs_warp();
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  if (warp >= p.head_warps) {
    gates(p, (warp - p.head_warps) * kWarp + lane);
    return;
  }
  const int per_batch = 2 * p.kv_heads + p.q_heads;
  const int b = warp / per_batch;
  int segment, head;  // 0: x, 1: B, 2: C
  locate_head(warp % per_batch, p.kv_heads, p.kv_heads, segment, head);
  const int64_t channels = static_cast<int64_t>(per_batch) * p.dim;
  // The head's first channel of [x | B | C].
  const int64_t first = static_cast<int64_t>(segment * p.kv_heads + head) * p.dim;
  const T* raw = p.projection + static_cast<int64_t>(b) * p.width + static_cast<int64_t>(p.q_heads) * p.dim + first;
  const T* norm = segment == 0 ? nullptr : (segment == 1 ? p.B_norm : p.C_norm);

  float u[kInputsPerLane];
  float squares = 0.0f;
#pragma unroll
  for (int i = 0; i < kInputsPerLane; ++i) {
    const int d = lane + i * kWarp;
    u[i] = d < p.dim ? to_float(raw[d]) : 0.0f;
    squares = fmaf(u[i], u[i], squares);
  }
  const float inverse_rms = norm != nullptr ? rsqrtf(warp_sum(squares) / static_cast<float>(p.dim) + p.eps) : 1.0f;
  float y[kInputsPerLane];
#pragma unroll
  for (int i = 0; i < kInputsPerLane; ++i) {
    const int d = lane + i * kWarp;
    y[i] = 0.0f;
    if (d >= p.dim) continue;
    const float value = norm != nullptr ? u[i] * inverse_rms * to_float(norm[d]) : u[i];
    const int64_t c = first + d;
    y[i] = conv_silu_step<T, K>(p.history + (b * channels + c) * (K - 1), p.weight + c * K,
                                p.bias != nullptr ? p.bias + c : nullptr, value);
  }
  float* out = segment == 0 ? p.x : (segment == 1 ? p.Bm : p.Cm);
  const int heads = segment == 2 ? p.q_heads : p.kv_heads;
  store_repeated(out, y, 1.0f, b, p.q_heads, head, p.q_heads / heads, p.dim, lane);
}

void check_tensor(const at::Tensor& tensor, const char* name, at::ScalarType type,
                  std::initializer_list<int64_t> sizes, const at::Device& device) {
  check_input(tensor, "mamba2_decode_inputs", name, type, sizes, device);
}

template <typename T>
void launch_typed(const at::Tensor& projection, const Mamba2DecodeWeights& w, const at::Tensor& conv_state,
                  const Mamba2DecodeInputs& out) {
  const int64_t B = projection.size(0), Hq = w.q_heads, Hkv = w.kv_heads, D = w.head_dim;
  const int64_t C = (2 * Hkv + Hq) * D, K = w.conv.size(-1);
  const at::ScalarType type = projection.scalar_type();
  const at::Device device = projection.device();
  PRIME_CHECK(K >= 2 && K <= 4, "mamba2_decode_inputs: conv size ", K, " is not 2, 3 or 4");
  check_tensor(projection, "projection", type, {B, 2 * (Hq + Hkv) * D + Hq}, device);
  check_tensor(w.conv, "conv weight", type, {C, 1, K}, device);
  if (w.conv_bias.defined()) check_tensor(w.conv_bias, "conv bias", type, {C}, device);
  PRIME_CHECK(w.B_norm.defined() == w.C_norm.defined(), "mamba2_decode_inputs: B_norm and C_norm go together");
  if (w.B_norm.defined()) {
    check_tensor(w.B_norm, "B_norm", type, {D}, device);
    check_tensor(w.C_norm, "C_norm", type, {D}, device);
  }
  const at::Tensor A_log = head_parameter_fp32(w.A_log, "mamba2_decode_inputs", "A_log", Hq, device);
  const at::Tensor dt_bias = head_parameter_fp32(w.dt_bias, "mamba2_decode_inputs", "dt_bias", Hq, device);
  check_tensor(conv_state, "conv state", at::kFloat, {B, C, K - 1}, device);
  for (const at::Tensor* t : {&out.x, &out.B, &out.C}) check_tensor(*t, "out", at::kFloat, {B, Hq, D}, device);
  check_tensor(out.delta, "delta", at::kFloat, {B, Hq}, device);
  check_tensor(out.A, "A", at::kFloat, {Hq}, device);
  const auto pointer = [](const at::Tensor& t) { return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr; };
  Params<T> p{};
  p.projection = pointer(projection);
  p.weight = pointer(w.conv);
  p.bias = pointer(w.conv_bias);
  p.B_norm = pointer(w.B_norm);
  p.C_norm = pointer(w.C_norm);
  p.A_log = static_cast<const float*>(A_log.data_ptr());
  p.dt_bias = static_cast<const float*>(dt_bias.data_ptr());
  p.history = static_cast<float*>(conv_state.data_ptr());
  p.x = static_cast<float*>(out.x.data_ptr());
  p.Bm = static_cast<float*>(out.B.data_ptr());
  p.Cm = static_cast<float*>(out.C.data_ptr());
  p.delta = static_cast<float*>(out.delta.data_ptr());
  p.A = static_cast<float*>(out.A.data_ptr());
  p.batch = static_cast<int>(B);
  p.q_heads = static_cast<int>(Hq);
  p.kv_heads = static_cast<int>(Hkv);
  p.dim = static_cast<int>(D);
  p.width = static_cast<int>(projection.size(1));
  p.eps = static_cast<float>(w.bc_norm_eps);
  const int64_t head_warps = B * (2 * Hkv + Hq);
  p.head_warps = static_cast<int>(head_warps);
  const dim3 grid = inputs_grid(head_warps, B * Hq, "mamba2_decode_inputs");
  const auto launch = [&](auto kernel) {
    launch_kernel("mamba2_decode_inputs_kernel", kernel, grid, kInputsThreads, 0, at::cuda::getCurrentCUDAStream(), p);
  };
  switch (K) {
    case 2: launch(mamba2_decode_inputs_kernel<T, 2>); break;
    case 3: launch(mamba2_decode_inputs_kernel<T, 3>); break;
    default: launch(mamba2_decode_inputs_kernel<T, 4>); break;
  }
}

}  // namespace

void launch_mamba2_decode_inputs(const at::Tensor& projection, const Mamba2DecodeWeights& weights,
                                 const at::Tensor& conv_state, const Mamba2DecodeInputs& out) {
  const char* op = "mamba2_decode_inputs";
  PRIME_CHECK(weights.head_dim >= 1 && weights.head_dim <= kDecodeMaxDim, op, ": D = ", weights.head_dim,
              " is not in [1, ", kDecodeMaxDim, "]");
  PRIME_CHECK(weights.q_heads >= 1 && weights.kv_heads >= 1 && weights.q_heads % weights.kv_heads == 0, op, ": ",
              weights.kv_heads, " x/B heads do not divide ", weights.q_heads);
  PRIME_CHECK(weights.conv.defined() && weights.conv.dim() == 3, op, ": the conv weight must be [C, 1, K]");
  if (projection.size(0) == 0) return;
  const at::cuda::CUDAGuard guard(projection.device());
  if (projection.scalar_type() == at::kBFloat16) launch_typed<__nv_bfloat16>(projection, weights, conv_state, out);
  else if (projection.scalar_type() == at::kFloat) launch_typed<float>(projection, weights, conv_state, out);
  else PRIME_CHECK(false, op, ": the projection must be bf16 or fp32, got ", c10::toString(projection.scalar_type()));
}

}  // namespace prime::kernels::detail
