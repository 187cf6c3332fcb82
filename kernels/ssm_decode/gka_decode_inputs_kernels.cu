// CUDA kernels of GKA's decode inputs (decode_inputs.h), two launches on the current stream.
//
// The gates first: a warp per (b, h, gate) forms the gate's dot product with the token, lanes
// streaming the weight's row and x in 16-byte packs, eight packs each in flight, fp32 sums
// meeting in one butterfly; then the gate's activation: beta's scale sigmoid(z + b_bias) + 1e-6
// (fp32, kept for the heads), alpha = sigmoid(z + alpha_bias), the log decay
// -e^A_log softplus(z + dt_bias). Three gates of a 4096-wide token at B = 1 are 96 warps of one
// round trip each, where the torch form casts x and each gate's weight to fp32 first.
//
// Then a warp per (b, head of q, k or v), as GDN's front: the conv and SiLU over the cache's
// history (decode_inputs.cuh; v as projected where it has no conv), for q and k the L2 norm
// y / (sqrt(sum y^2) + 1e-6), and each output row stored to every head it serves, k's and v's
// times that head's beta scale, each value rounded from fp32 to the solve dtype once.
//
// The arithmetic is the torch form's (GkaMixer::prepare: fp32 throughout, then the solve dtype)
// up to the order of the sums.
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
constexpr int kPacksInFlight = 8;  // 16-byte packs of the weight row (and of x) per lane at once
static_assert(kInputsPerLane * kWarp == kDecodeMaxDim, "a lane holds a head's channels lane + 32 i");

enum Gate { kBeta = 0, kAlpha = 1, kDecay = 2 };

template <typename T, typename S>
struct GateParams {
  const T* x;          // [B, hidden]
  const T* weight[3];  // by Gate: [H, hidden], null where absent
  const T* bias[2];    // b_bias, alpha_bias: [H]
  const float* A_log;  // [H]
  const float* dt_bias;
  float* beta_scale;  // [B, H]: sigmoid + 1e-6
  S* alpha;           // [B, H]
  S* log_decay;       // [B, H]
  int gates[3];       // the present gates, in order
  int gate_count, batch, heads, hidden;
  bool packed;  // 16-byte loads: hidden a multiple of a pack and every row aligned to 16 bytes
};

// The sum of the products of two fp32 or bf16 packs, into `sum`.
__device__ __forceinline__ float pack_dot(const uint4& a, const uint4& b, float sum, float) {
  const float* fa = reinterpret_cast<const float*>(&a);
  const float* fb = reinterpret_cast<const float*>(&b);
#pragma unroll
  for (int i = 0; i < 4; ++i) sum = fmaf(fa[i], fb[i], sum);
  return sum;
}

__device__ __forceinline__ float pack_dot(const uint4& a, const uint4& b, float sum, __nv_bfloat16) {
  const __nv_bfloat162* ha = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* hb = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(ha[i]), fb = __bfloat1622float2(hb[i]);
    sum = fmaf(fa.x, fb.x, sum);
    sum = fmaf(fa.y, fb.y, sum);
  }
  return sum;
}

// sum_j w[j] x[j] over n, in every lane of the warp.
template <typename T>
__device__ __forceinline__ float warp_dot(const T* w, const T* x, int n, bool packed, int lane) {
  float sum = 0.0f;
  if (packed) {
    const int packs = n / static_cast<int>(16 / sizeof(T));
    const uint4* wp = reinterpret_cast<const uint4*>(w);
    const uint4* xp = reinterpret_cast<const uint4*>(x);
    for (int first = lane; first < packs; first += kWarp * kPacksInFlight) {
      uint4 wv[kPacksInFlight], xv[kPacksInFlight];
#pragma unroll
      for (int i = 0; i < kPacksInFlight; ++i)
        if (first + i * kWarp < packs) wv[i] = __ldg(wp + first + i * kWarp), xv[i] = __ldg(xp + first + i * kWarp);
#pragma unroll
      for (int i = 0; i < kPacksInFlight; ++i)
        if (first + i * kWarp < packs) sum = pack_dot(wv[i], xv[i], sum, T());
    }
  } else {
    for (int j = lane; j < n; j += kWarp) sum = fmaf(to_float(w[j]), to_float(x[j]), sum);
  }
  return warp_sum(sum);
}

template <typename T, typename S>
__global__ void __launch_bounds__(kInputsThreads) gka_decode_gates_kernel(const GateParams<T, S> p) {
  pdl_wait();  // the step's inputs come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  const int warp = inputs_warp();
  if (warp >= p.batch * p.heads * p.gate_count) return;
  // Selected, not indexed: a dynamic index into the parameters would copy them to local memory.
  const int slot = warp % p.gate_count;
  const int gate = slot == 0 ? p.gates[0] : (slot == 1 ? p.gates[1] : p.gates[2]);
  const T* weight = gate == kBeta ? p.weight[kBeta] : (gate == kAlpha ? p.weight[kAlpha] : p.weight[kDecay]);
  const int index = warp / p.gate_count;  // b * H + h
  const int h = index % p.heads, b = index / p.heads;
  const float z = warp_dot(weight + static_cast<int64_t>(h) * p.hidden,
                           p.x + static_cast<int64_t>(b) * p.hidden, p.hidden, p.packed, threadIdx.x % kWarp);
  if (threadIdx.x % kWarp != 0) return;
  if (gate == kBeta) {
    p.beta_scale[index] = 1.0f / (1.0f + expf(-(z + to_float(p.bias[kBeta][h])))) + 1e-6f;
  } else if (gate == kAlpha) {
    p.alpha[index] = static_cast<S>(1.0f / (1.0f + expf(-(z + to_float(p.bias[kAlpha][h])))));
  } else {
    p.log_decay[index] = static_cast<S>(-expf(p.A_log[h]) * softplus(z + p.dt_bias[h]));
  }
}

// One of the q, k, v branches.
template <typename T, typename S>
struct Branch {
  const T* raw;     // [B, C], the token's projection
  const T* weight;  // [C, K], or null: no conv (v as projected)
  float* history;   // [B, C, K-1] (null without a conv), updated in place
  S* out;           // [B, H, D]
  int heads;        // of this branch; each serves H / heads consecutive heads of the output
  bool normalize;   // the L2 norm (q, k)
  bool gated;       // times the served head's beta scale (k, v with the beta gate)
};

template <typename T, typename S>
struct HeadParams {
  Branch<T, S> q, k, v;
  const float* beta_scale;  // [B, H] or null
  int batch, heads, dim;
};

template <typename T, typename S, int K>
__global__ void __launch_bounds__(kInputsThreads) gka_decode_heads_kernel(const HeadParams<T, S> p) {
  pdl_wait();  // the step's inputs come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  const int per_batch = p.q.heads + p.k.heads + p.v.heads;
  const int warp = inputs_warp();
  if (warp >= p.batch * per_batch) return;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int b = warp / per_batch;
  int segment, head;
  locate_head(warp % per_batch, p.q.heads, p.k.heads, segment, head);
  const Branch<T, S> br = segment == 0 ? p.q : (segment == 1 ? p.k : p.v);
  const int64_t channels = static_cast<int64_t>(br.heads) * p.dim;

  float y[kInputsPerLane];
  const float squares = head_row<T, K>(br.raw, br.weight, nullptr, br.history, channels, b, head, p.dim, lane, y,
                                       [](float u) { return u; });
  if (br.normalize) {
    const float norm = sqrtf(warp_sum(squares)) + 1e-6f;
#pragma unroll
    for (int i = 0; i < kInputsPerLane; ++i) y[i] = y[i] / norm;
  }
  const int groups = p.heads / br.heads;
  for (int g = 0; g < groups; ++g) {
    const int64_t row = static_cast<int64_t>(b) * p.heads + static_cast<int64_t>(head) * groups + g;
    const float scale = br.gated ? p.beta_scale[row] : 1.0f;
    S* out = br.out + row * p.dim;
#pragma unroll
    for (int i = 0; i < kInputsPerLane; ++i) {
      const int d = lane + i * kWarp;
      if (d < p.dim) out[d] = static_cast<S>(br.gated ? y[i] * scale : y[i]);
    }
  }
}

const char* const kOp = "gka_decode_inputs";

void check_tensor(const at::Tensor& tensor, const char* name, at::ScalarType type,
                  std::initializer_list<int64_t> sizes, const at::Device& device) {
  check_input(tensor, kOp, name, type, sizes, device);
}

template <typename T>
const T* pointer(const at::Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, typename S>
Branch<T, S> branch(const at::Tensor& raw, const at::Tensor& weight, const at::Tensor& history, const at::Tensor& out,
                    int64_t heads, int64_t K, bool normalize, bool gated, const char* name) {
  const int64_t B = out.size(0), C = heads * out.size(2);
  const at::ScalarType type = raw.scalar_type();
  check_tensor(raw, name, type, {B, C}, out.device());
  if (weight.defined()) {
    check_tensor(weight, "conv weight", type, {C, 1, K}, out.device());
    check_tensor(history, "conv state", at::kFloat, {B, C, K - 1}, out.device());
  }
  return {pointer<T>(raw),
          pointer<T>(weight),
          weight.defined() ? static_cast<float*>(history.data_ptr()) : nullptr,
          static_cast<S*>(out.data_ptr()),
          static_cast<int>(heads),
          normalize,
          gated};
}

template <typename T, typename S>
void launch_gates(const at::Tensor& x, const GkaDecodeWeights& w, const GkaDecodeInputs& out,
                  const at::Tensor& beta_scale) {
  const int64_t B = x.size(0), H = w.heads, hidden = x.size(1);
  const at::Device device = x.device();
  GateParams<T, S> p{};
  p.x = pointer<T>(x);
  const at::Tensor* weights[3] = {&w.b_proj, &w.alpha_proj, &w.a_proj};
  const at::Tensor* biases[2] = {&w.b_bias, &w.alpha_bias};
  const char* names[3] = {"b_proj", "alpha_proj", "a_proj"};
  at::Tensor A_log, dt_bias;  // fp32, alive through the launch
  p.packed = hidden % static_cast<int64_t>(16 / sizeof(T)) == 0 && aligned16(p.x);
  for (int g = 0; g < 3; ++g) {
    if (!weights[g]->defined()) continue;
    check_tensor(*weights[g], names[g], x.scalar_type(), {H, hidden}, device);
    p.weight[g] = pointer<T>(*weights[g]);
    p.packed = p.packed && aligned16(p.weight[g]);
    if (g < 2) {
      check_tensor(*biases[g], g == 0 ? "b_bias" : "alpha_bias", x.scalar_type(), {H}, device);
      p.bias[g] = pointer<T>(*biases[g]);
    }
    p.gates[p.gate_count++] = g;
  }
  if (p.gate_count == 0) return;
  if (w.a_proj.defined()) {
    A_log = head_parameter_fp32(w.A_log, kOp, "A_log", H, device);
    dt_bias = head_parameter_fp32(w.dt_bias, kOp, "dt_bias", H, device);
    p.A_log = static_cast<const float*>(A_log.data_ptr());
    p.dt_bias = static_cast<const float*>(dt_bias.data_ptr());
    p.log_decay = static_cast<S*>(out.log_decay.data_ptr());
  }
  if (w.alpha_proj.defined()) p.alpha = static_cast<S*>(out.alpha.data_ptr());
  if (w.b_proj.defined()) p.beta_scale = static_cast<float*>(beta_scale.data_ptr());
  p.batch = static_cast<int>(B);
  p.heads = static_cast<int>(H);
  p.hidden = static_cast<int>(hidden);
  const dim3 grid = inputs_grid(B * H * p.gate_count, 0, kOp);
  launch_kernel("gka_decode_gates_kernel", gka_decode_gates_kernel<T, S>, grid, kInputsThreads, 0,
                at::cuda::getCurrentCUDAStream(), p);
}

template <typename T, typename S>
void launch_typed(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const GkaDecodeWeights& w, const GkaDecodeConvStates& states, const GkaDecodeInputs& out, int64_t K) {
  const int64_t B = x.size(0), H = w.heads;
  check_tensor(x, "x", q.scalar_type(), {B, x.size(1)}, out.q.device());
  PRIME_CHECK(x.size(1) <= INT_MAX, kOp, ": hidden size ", x.size(1), " exceeds the kernel's range");
  const bool beta = w.b_proj.defined();
  HeadParams<T, S> p{};
  p.q = branch<T, S>(q, w.q_conv, states.q, out.q, w.q_heads, K, true, false, "q");
  p.k = branch<T, S>(k, w.k_conv, states.k, out.k, w.k_heads, K, true, beta, "k");
  p.v = branch<T, S>(v, w.v_conv, states.v, out.v, w.v_heads, K, false, beta, "v");
  const at::Tensor beta_scale = beta ? at::empty({B, H}, x.options().dtype(at::kFloat)) : at::Tensor();
  launch_gates<T, S>(x, w, out, beta_scale);
  p.beta_scale = beta ? static_cast<const float*>(beta_scale.data_ptr()) : nullptr;
  p.batch = static_cast<int>(B);
  p.heads = static_cast<int>(H);
  p.dim = static_cast<int>(w.head_dim);
  const dim3 grid = inputs_grid(B * (w.q_heads + w.k_heads + w.v_heads), 0, kOp);
  const auto launch = [&](auto kernel) {
    launch_kernel("gka_decode_heads_kernel", kernel, grid, kInputsThreads, 0, at::cuda::getCurrentCUDAStream(), p);
  };
  switch (K) {
    case 2: launch(gka_decode_heads_kernel<T, S, 2>); break;
    case 3: launch(gka_decode_heads_kernel<T, S, 3>); break;
    case 4: launch(gka_decode_heads_kernel<T, S, 4>); break;
    default: PRIME_CHECK(false, kOp, ": conv size ", K, " is not 2, 3 or 4");
  }
}

template <typename S>
void launch_solve_typed(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const GkaDecodeWeights& w, const GkaDecodeConvStates& states, const GkaDecodeInputs& out,
                        int64_t K) {
  if (q.scalar_type() == at::kBFloat16) launch_typed<__nv_bfloat16, S>(x, q, k, v, w, states, out, K);
  else if (q.scalar_type() == at::kFloat) launch_typed<float, S>(x, q, k, v, w, states, out, K);
  else PRIME_CHECK(false, kOp, ": projections must be bf16 or fp32, got ", c10::toString(q.scalar_type()));
}

}  // namespace

void launch_gka_decode_inputs(const at::Tensor& x, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const GkaDecodeWeights& weights, const GkaDecodeConvStates& states,
                              const GkaDecodeInputs& out) {
  PRIME_CHECK(weights.head_dim >= 1 && weights.head_dim <= kDecodeMaxDim, kOp, ": D = ", weights.head_dim,
              " is not in [1, ", kDecodeMaxDim, "]");
  for (const int64_t heads : {weights.q_heads, weights.k_heads, weights.v_heads})
    PRIME_CHECK(heads >= 1 && weights.heads % heads == 0, kOp, ": ", heads, " heads do not divide H = ",
                weights.heads);
  PRIME_CHECK(weights.q_conv.defined() && weights.k_conv.defined(), kOp, ": q and k need their convs");
  PRIME_CHECK(weights.b_proj.defined() == weights.b_bias.defined() &&
                  weights.alpha_proj.defined() == weights.alpha_bias.defined(),
              kOp, ": a gate's weight and bias come together");
  const int64_t B = q.size(0), H = weights.heads, D = weights.head_dim;
  const at::ScalarType solve = out.q.scalar_type();
  PRIME_CHECK(solve == at::kFloat || solve == at::kDouble, kOp, ": the solve dtype must be fp32 or float64, got ",
              c10::toString(solve));
  for (const at::Tensor* t : {&out.q, &out.k, &out.v}) check_tensor(*t, "out", solve, {B, H, D}, q.device());
  PRIME_CHECK(out.alpha.defined() == weights.alpha_proj.defined() &&
                  out.log_decay.defined() == weights.a_proj.defined(),
              kOp, ": the gate outputs must match the layer's gates");
  for (const at::Tensor* t : {&out.alpha, &out.log_decay})
    if (t->defined()) check_tensor(*t, "out", solve, {B, H}, q.device());
  const int64_t K = weights.q_conv.size(-1);
  if (B == 0) return;
  const at::cuda::CUDAGuard guard(q.device());
  if (solve == at::kDouble) launch_solve_typed<double>(x, q, k, v, weights, states, out, K);
  else launch_solve_typed<float>(x, q, k, v, weights, states, out, K);
}

}  // namespace prime::kernels::detail
