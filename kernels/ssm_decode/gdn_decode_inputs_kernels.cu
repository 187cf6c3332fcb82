// CUDA kernel of GDN's decode inputs (decode_inputs.h). A warp per (b, head of one of the q,
// k, v branches): lane l holds the head's channels l, l + 32, ... (D <= 256: at most 8 each), so
// the head's L2 norm is one butterfly, and each output row is written with coalesced stores to
// every head it serves. After those warps, a warp per 32 (b, h) pairs computes the gates. Tiny
// and latency bound (the 8B shape at B = 1: 48 head warps of 128 channels, one gate warp): what
// it replaces is the torch form's thirty-odd launches, not bytes.
//
// The arithmetic follows the unfused path's, so the two agree to fp32 rounding: the conv and its
// SiLU as the short_conv decode kernel (decode_inputs.cuh); without a conv at::silu's
// z / (1 + e^-z); the norm x * (rsqrt(sum x^2 + 1e-6) * scale) as model::l2_normalize_inside;
// beta = 1 / (1 + e^-b) times the scale; g = -e^A_log * softplus(a + dt_bias).
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

// One of the q, k, v branches.
template <typename T>
struct Branch {
  const T* raw;     // [B, C], the token's projection
  const T* weight;  // [C, K] (null without a conv)
  const T* bias;    // [C] or null
  float* history;   // [B, C, K-1] (null without a conv), updated in place
  float* out;       // [B, H, D]
  int heads;        // of this branch; each serves H / heads consecutive heads of the output
  float scale;      // the L2 norm's scale; 0: no norm (v)
};

template <typename T>
struct Params {
  Branch<T> q, k, v;
  const T* b;        // [B, H]
  const T* a;        // [B, H]
  const float* A_log;    // [H]
  const float* dt_bias;  // [H]
  float* g;          // [B, H]
  float* beta;       // [B, H]
  int batch, heads, dim;
  float beta_scale;
  int head_warps;  // B * (Hq + Hk + Hv)
};

template <typename T>
__device__ __forceinline__ void gates(const Params<T>& p, int index) {
  if (index >= p.batch * p.heads) return;
  const int h = index % p.heads;
  p.beta[index] = p.beta_scale * (1.0f / (1.0f + expf(-to_float(p.b[index]))));
  const float shifted = to_float(p.a[index]) + p.dt_bias[h];
  p.g[index] = -expf(p.A_log[h]) * softplus(shifted);
}

// K = 0: no conv, SiLU of the projection itself.
template <typename T, int K>
__global__ void __launch_bounds__(kInputsThreads) gdn_decode_inputs_kernel(const Params<T> p) {
  pdl_wait();  // the step's inputs come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  const int warp = inputs_warp();
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  if (warp >= p.head_warps) {
    gates(p, (warp - p.head_warps) * kWarp + lane);
    return;
  }
  const int per_batch = p.q.heads + p.k.heads + p.v.heads;
  const int b = warp / per_batch;
  int segment, head;
  locate_head(warp % per_batch, p.q.heads, p.k.heads, segment, head);
  const Branch<T> br = segment == 0 ? p.q : (segment == 1 ? p.k : p.v);
  const int64_t channels = static_cast<int64_t>(br.heads) * p.dim;

  float y[kInputsPerLane];
  float squares = 0.0f;
#pragma unroll
  for (int i = 0; i < kInputsPerLane; ++i) {
    const int d = lane + i * kWarp;
    y[i] = 0.0f;
    if (d >= p.dim) continue;
    const int64_t c = static_cast<int64_t>(head) * p.dim + d;
    const float u = to_float(br.raw[b * channels + c]);
    if constexpr (K == 0) {
      y[i] = u / (1.0f + expf(-u));
    } else {
      y[i] = conv_silu_step<T, K>(br.history + (b * channels + c) * (K - 1), br.weight + c * K,
                                  br.bias != nullptr ? br.bias + c : nullptr, u);
    }
    squares = fmaf(y[i], y[i], squares);
  }
  float factor = 1.0f;
  if (br.scale != 0.0f) factor = rsqrtf(warp_sum(squares) + 1e-6f) * br.scale;
  store_repeated(br.out, y, factor, b, p.heads, head, p.heads / br.heads, p.dim, lane);
}

void check_tensor(const at::Tensor& tensor, const char* name, at::ScalarType type,
                  std::initializer_list<int64_t> sizes, const at::Device& device) {
  check_input(tensor, "gdn_decode_inputs", name, type, sizes, device);
}

template <typename T>
Branch<T> branch(const at::Tensor& raw, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& history,
                 const at::Tensor& out, int64_t heads, double scale, int64_t K, const char* name) {
  const int64_t B = out.size(0), C = heads * out.size(2);
  const at::ScalarType type = raw.scalar_type();
  check_tensor(raw, name, type, {B, C}, out.device());
  if (K > 0) {
    check_tensor(weight, "conv weight", type, {C, 1, K}, out.device());
    if (bias.defined()) check_tensor(bias, "conv bias", type, {C}, out.device());
    check_tensor(history, "conv state", at::kFloat, {B, C, K - 1}, out.device());
  }
  const auto pointer = [](const at::Tensor& t) { return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr; };
  return {pointer(raw),
          K > 0 ? pointer(weight) : nullptr,
          K > 0 ? pointer(bias) : nullptr,
          K > 0 ? static_cast<float*>(history.data_ptr()) : nullptr,
          static_cast<float*>(out.data_ptr()),
          static_cast<int>(heads),
          static_cast<float>(scale)};
}

template <typename T>
void launch_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& b,
                  const at::Tensor& a, const GdnDecodeWeights& w, const GdnDecodeConvStates& states,
                  const GdnDecodeInputs& out, int64_t K) {
  const int64_t B = q.size(0), H = w.heads;
  Params<T> p{};
  p.q = branch<T>(q, w.q_conv, w.q_conv_bias, states.q, out.q, w.q_heads, w.q_scale, K, "q");
  p.k = branch<T>(k, w.k_conv, w.k_conv_bias, states.k, out.k, w.k_heads, 1.0, K, "k");
  p.v = branch<T>(v, w.v_conv, w.v_conv_bias, states.v, out.v, w.v_heads, 0.0, K, "v");
  const at::Device device = out.q.device();
  check_tensor(b, "b", q.scalar_type(), {B, H}, device);
  check_tensor(a, "a", q.scalar_type(), {B, H}, device);
  const at::Tensor A_log = head_parameter_fp32(w.A_log, "gdn_decode_inputs", "A_log", H, device);
  const at::Tensor dt_bias = head_parameter_fp32(w.dt_bias, "gdn_decode_inputs", "dt_bias", H, device);
  p.b = static_cast<const T*>(b.data_ptr());
  p.a = static_cast<const T*>(a.data_ptr());
  p.A_log = static_cast<const float*>(A_log.data_ptr());
  p.dt_bias = static_cast<const float*>(dt_bias.data_ptr());
  p.g = static_cast<float*>(out.g.data_ptr());
  p.beta = static_cast<float*>(out.beta.data_ptr());
  p.batch = static_cast<int>(B);
  p.heads = static_cast<int>(H);
  p.dim = static_cast<int>(w.head_dim);
  p.beta_scale = static_cast<float>(w.beta_scale);
  const int64_t head_warps = B * (w.q_heads + w.k_heads + w.v_heads);
  p.head_warps = static_cast<int>(head_warps);
  const dim3 grid = inputs_grid(head_warps, B * H, "gdn_decode_inputs");
  const auto launch = [&](auto kernel) {
    launch_kernel("gdn_decode_inputs_kernel", kernel, grid, kInputsThreads, 0, at::cuda::getCurrentCUDAStream(), p);
  };
  switch (K) {
    case 0: launch(gdn_decode_inputs_kernel<T, 0>); break;
    case 2: launch(gdn_decode_inputs_kernel<T, 2>); break;
    case 3: launch(gdn_decode_inputs_kernel<T, 3>); break;
    case 4: launch(gdn_decode_inputs_kernel<T, 4>); break;
    default: PRIME_CHECK(false, "gdn_decode_inputs: conv size ", K, " is not 2, 3 or 4");
  }
}

}  // namespace

void launch_gdn_decode_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& b, const at::Tensor& a, const GdnDecodeWeights& weights,
                              const GdnDecodeConvStates& states, const GdnDecodeInputs& out) {
  const char* op = "gdn_decode_inputs";
  PRIME_CHECK(weights.head_dim >= 1 && weights.head_dim <= kDecodeMaxDim, op, ": D = ", weights.head_dim,
              " is not in [1, ", kDecodeMaxDim, "]");
  for (const int64_t heads : {weights.q_heads, weights.k_heads, weights.v_heads})
    PRIME_CHECK(heads >= 1 && weights.heads % heads == 0, op, ": ", heads, " heads do not divide H = ",
                weights.heads);
  const int64_t B = q.size(0), H = weights.heads, D = weights.head_dim;
  for (const at::Tensor* t : {&out.q, &out.k, &out.v}) check_tensor(*t, "out", at::kFloat, {B, H, D}, q.device());
  for (const at::Tensor* t : {&out.g, &out.beta}) check_tensor(*t, "out", at::kFloat, {B, H}, q.device());
  const int64_t K = weights.q_conv.defined() ? weights.q_conv.size(-1) : 0;
  if (B == 0) return;
  const at::cuda::CUDAGuard guard(q.device());
  if (q.scalar_type() == at::kBFloat16) launch_typed<__nv_bfloat16>(q, k, v, b, a, weights, states, out, K);
  else if (q.scalar_type() == at::kFloat) launch_typed<float>(q, k, v, b, a, weights, states, out, K);
  else PRIME_CHECK(false, op, ": projections must be bf16 or fp32, got ", c10::toString(q.scalar_type()));
}

}  // namespace prime::kernels::detail
