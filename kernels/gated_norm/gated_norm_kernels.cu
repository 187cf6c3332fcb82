// CUDA kernels of the gated head norms (see gated_norm.h for the op and both orders). Memory
// bound: one warp per row of D <= 256 elements, up to 8 per lane kept in registers between the
// row's sums and its outputs, so x, the gate and dy are each read once; the weight comes from L2.
// The forward writes the output once, in the projection's dtype (the cast the torch form does
// after the norm); the backward writes dx, the gate's gradient and, for the weight's gradient,
// the per-element products that the wrapper sums over rows (no atomics: deterministic). Math is
// fp32 throughout, with the torch forms' order of operations.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/gated_norm/gated_norm.h"
#include "kernels/gated_norm/gated_norm_launch.h"
#include "kernels/rms_norm/rms_norm_rows.cuh"

namespace prime::kernels::detail {

namespace {

using rms_norm_rows::Bits;
using rms_norm_rows::Storage;

constexpr int kWarp = 32;
constexpr int kThreads = 256;  // 8 rows per block
constexpr int kPerLane = static_cast<int>(kGatedNormMaxDim) / kWarp;

// Where row `row` ([N, H] flattened) of a strided [N, H, D] view starts.
struct RowLayout {
  int64_t n_stride, h_stride;
  __device__ int64_t offset(int64_t row, int heads) const { return (row / heads) * n_stride + (row % heads) * h_stride; }
};

// What both kernels take besides their pointers: the rows, their layouts and the norm's constants.
struct Rows {
  int64_t count;
  int heads, D;
  RowLayout x, gate;
  bool weight_per_head;
  float eps, inverse_dim;
  int blocks;
};

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// kGateFirst: y = w * rms_normalize(x * silu(g)) (Mamba-2); else y = w * rms_normalize(x) * silu(g).
// The weight is fp32, or bf16 (inference: read as it is stored, no cast launched).
template <typename TGate, typename TOut, typename TWeight, bool kGateFirst>
__global__ void __launch_bounds__(kThreads)
    gated_norm_kernel(const float* __restrict__ x, const Bits<TGate>* __restrict__ gate,
                      const Bits<TWeight>* __restrict__ weight, Bits<TOut>* __restrict__ out, Rows rows) {
  pdl_wait();  // x and the gate come from the kernels before (pdl.cuh)
  pdl_launch_dependents();
  const int lane = threadIdx.x % kWarp, D = rows.D;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp;
  if (row >= rows.count) return;  // uniform per warp: the shuffles below see whole warps
  const float* x_row = x + rows.x.offset(row, rows.heads);
  const Bits<TGate>* gate_row = gate + rows.gate.offset(row, rows.heads);
  const Bits<TWeight>* w_row = weight + (rows.weight_per_head ? static_cast<int64_t>(row % rows.heads) * D : 0);
  float source[kPerLane], gated[kPerLane];
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + i * kWarp;
    if (d < D) {
      const float g = Storage<TGate>::to_float(gate_row[d]);
      const float silu = g / (1.f + expf(-g));  // ATen's silu
      const float xv = x_row[d];
      source[i] = kGateFirst ? xv * silu : xv;
      gated[i] = silu;
      squares += source[i] * source[i];
    }
  }
  const float scale = rsqrtf(warp_sum(squares) * rows.inverse_dim + rows.eps);
  Bits<TOut>* out_row = out + row * D;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + i * kWarp;
    if (d < D) {
      const float normed = source[i] * scale;
      const float w = Storage<TWeight>::to_float(w_row[d]);
      const float y = kGateFirst ? normed * w : w * normed * gated[i];
      out_row[d] = static_cast<Bits<TOut>>(Storage<TOut>::from_float(y));
    }
  }
}

// The backward, u the normalised source (x, or x silu(g) when kGateFirst), s its scale, n = u s:
//   dn = dy w (kGateFirst) or dy w silu(g);  du = s dn - u s^3 sum(dn u) / D
//   kGateFirst: dx = du silu(g), dg = du x silu'(g), weight term dy n
//   otherwise:  dx = du,         dg = dy w n silu'(g), weight term dy n silu(g)
template <typename TGate, typename TOut, bool kGateFirst>
__global__ void __launch_bounds__(kThreads)
    gated_norm_backward_kernel(const float* __restrict__ x, const Bits<TGate>* __restrict__ gate,
                               const float* __restrict__ weight, const Bits<TOut>* __restrict__ dy,
                               float* __restrict__ dx, Bits<TGate>* __restrict__ dgate, float* __restrict__ terms,
                               Rows rows) {
  const int lane = threadIdx.x % kWarp, D = rows.D;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp;
  if (row >= rows.count) return;
  const float* x_row = x + rows.x.offset(row, rows.heads);
  const Bits<TGate>* gate_row = gate + rows.gate.offset(row, rows.heads);
  const float* w_row = weight + (rows.weight_per_head ? static_cast<int64_t>(row % rows.heads) * D : 0);
  const Bits<TOut>* dy_row = dy + row * D;
  float xs[kPerLane], gs[kPerLane], us[kPerLane], dns[kPerLane], dys[kPerLane];
  float squares = 0.f, dot = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + i * kWarp;
    if (d < D) {
      xs[i] = x_row[d];
      gs[i] = Storage<TGate>::to_float(gate_row[d]);
      dys[i] = Storage<TOut>::to_float(dy_row[d]);
      const float silu = gs[i] * sigmoid(gs[i]);
      us[i] = kGateFirst ? xs[i] * silu : xs[i];
      dns[i] = kGateFirst ? dys[i] * w_row[d] : dys[i] * silu * w_row[d];
      squares += us[i] * us[i];
      dot += dns[i] * us[i];
    }
  }
  const float scale = rsqrtf(warp_sum(squares) * rows.inverse_dim + rows.eps);
  const float coefficient = scale * scale * scale * warp_sum(dot) * rows.inverse_dim;
  const int64_t base = row * D;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + i * kWarp;
    if (d < D) {
      const float sig = sigmoid(gs[i]);
      const float silu = gs[i] * sig;
      const float silu_slope = sig * (1.f + gs[i] * (1.f - sig));
      const float du = scale * dns[i] - us[i] * coefficient;
      const float normed = us[i] * scale;
      float dg;
      if constexpr (kGateFirst) {
        dx[base + d] = du * silu;
        dg = du * xs[i] * silu_slope;
        if (terms) terms[base + d] = dys[i] * normed;
      } else {
        dx[base + d] = du;
        dg = dys[i] * w_row[d] * normed * silu_slope;
        if (terms) terms[base + d] = dys[i] * normed * silu;
      }
      dgate[base + d] = static_cast<Bits<TGate>>(Storage<TGate>::from_float(dg));
    }
  }
}

RowLayout layout_of(const at::Tensor& t) { return RowLayout{t.stride(0), t.stride(1)}; }

// Calls f(TGate{}, TOut{}) for the operands' dtypes (fp32 or bf16 each).
template <typename F>
void with_types(at::ScalarType gate_type, at::ScalarType out_type, F&& f) {
  const auto with_out = [&](auto gate_tag) {
    if (out_type == at::kFloat) f(gate_tag, float{});
    else f(gate_tag, __nv_bfloat16{});
  };
  if (gate_type == at::kFloat) with_out(float{});
  else with_out(__nv_bfloat16{});
}

// Checks x, the gate and the weight (fp32, or bf16 where bf16_weight allows), and lays out their rows.
Rows rows_of(const char* op, const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, double eps,
             bool bf16_weight = false) {
  PRIME_CHECK(x.is_cuda() && x.scalar_type() == at::kFloat && x.dim() == 3 && x.stride(2) == 1, op,
              ": x must be a CUDA fp32 [N, H, D] view with unit stride over D, got ", x.sizes(), " ", x.scalar_type());
  PRIME_CHECK(gate.device() == x.device() && gate.sizes() == x.sizes() && gate.stride(2) == 1 &&
                  (gate.scalar_type() == at::kFloat || gate.scalar_type() == at::kBFloat16),
              op, ": gate must be fp32 or bf16 of x's sizes with unit stride over D, got ", gate.sizes(), " ",
              gate.scalar_type());
  const int64_t D = x.size(2);
  PRIME_CHECK(D >= 1 && D <= kGatedNormMaxDim, op, ": rows of ", D, " (at most ", kGatedNormMaxDim, ")");
  check_operand(weight, op, "weight", bf16_weight && weight.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat,
                1);
  PRIME_CHECK(weight.device() == x.device() && (weight.size(0) == D || weight.size(0) == x.size(1) * D), op,
              ": weight ", weight.sizes(), " for ", x.size(1), " heads of ", D);
  Rows rows;
  rows.count = x.size(0) * x.size(1);
  rows.heads = static_cast<int>(x.size(1));
  rows.D = static_cast<int>(D);
  rows.x = layout_of(x);
  rows.gate = layout_of(gate);
  rows.weight_per_head = weight.size(0) != D;
  rows.eps = static_cast<float>(eps);
  rows.inverse_dim = 1.f / static_cast<float>(D);
  const int64_t blocks = (rows.count + kThreads / kWarp - 1) / (kThreads / kWarp);
  PRIME_CHECK(blocks <= INT_MAX, op, ": ", rows.count, " rows exceed the grid");
  rows.blocks = static_cast<int>(blocks);
  return rows;
}

}  // namespace

void launch_gated_norm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, double eps,
                       bool gate_first, const at::Tensor& out) {
  const char* op = "gated_norm";
  const Rows rows = rows_of(op, x, gate, weight, eps, /*bf16_weight=*/true);
  PRIME_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16, op, ": out must be fp32 or bf16");
  check_operand(out, op, "out", out.scalar_type(), 3);
  PRIME_CHECK(out.sizes() == x.sizes() && out.device() == x.device(), op, ": out ", out.sizes(), " for x ", x.sizes());
  if (rows.count == 0) return;
  const at::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  with_types(gate.scalar_type(), out.scalar_type(), [&](auto gate_tag, auto out_tag) {
    using TGate = decltype(gate_tag);
    using TOut = decltype(out_tag);
    const auto launch = [&](auto weight_tag) {
      using TWeight = decltype(weight_tag);
      const auto* w = static_cast<const Bits<TWeight>*>(weight.data_ptr());
      const auto* g = static_cast<const Bits<TGate>*>(gate.data_ptr());
      auto* o = static_cast<Bits<TOut>*>(out.data_ptr());
      if (gate_first)
        launch_kernel("gated_norm_kernel", gated_norm_kernel<TGate, TOut, TWeight, true>, rows.blocks, kThreads, 0,
                      stream, x.data_ptr<float>(), g, w, o, rows);
      else
        launch_kernel("gated_norm_kernel", gated_norm_kernel<TGate, TOut, TWeight, false>, rows.blocks, kThreads, 0,
                      stream, x.data_ptr<float>(), g, w, o, rows);
    };
    if (weight.scalar_type() == at::kBFloat16) launch(__nv_bfloat16{});
    else launch(float{});
  });
}

void launch_gated_norm_backward(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, double eps,
                                bool gate_first, const at::Tensor& dy, const at::Tensor& dx,
                                const at::Tensor& dgate, const at::Tensor& weight_terms) {
  const char* op = "gated_norm_backward";
  const Rows rows = rows_of(op, x, gate, weight, eps);
  PRIME_CHECK(dy.scalar_type() == at::kFloat || dy.scalar_type() == at::kBFloat16, op, ": dy must be fp32 or bf16");
  check_operand(dy, op, "dy", dy.scalar_type(), 3);
  check_operand(dx, op, "dx", at::kFloat, 3);
  check_operand(dgate, op, "dgate", gate.scalar_type(), 3);
  if (weight_terms.defined()) check_operand(weight_terms, op, "weight_terms", at::kFloat, 3);
  for (const at::Tensor* t : {&dy, &dx, &dgate, &weight_terms})
    PRIME_CHECK(!t->defined() || (t->sizes() == x.sizes() && t->device() == x.device()), op, ": an output of ",
                t->sizes(), " for x ", x.sizes());
  if (rows.count == 0) return;
  const at::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  float* terms = weight_terms.defined() ? weight_terms.data_ptr<float>() : nullptr;
  with_types(gate.scalar_type(), dy.scalar_type(), [&](auto gate_tag, auto out_tag) {
    using TGate = decltype(gate_tag);
    using TOut = decltype(out_tag);
    const auto launch = [&](auto kernel) {
      kernel<<<rows.blocks, kThreads, 0, stream>>>(
          x.data_ptr<float>(), static_cast<const Bits<TGate>*>(gate.data_ptr()), weight.data_ptr<float>(),
          static_cast<const Bits<TOut>*>(dy.data_ptr()), dx.data_ptr<float>(),
          static_cast<Bits<TGate>*>(dgate.data_ptr()), terms, rows);
    };
    if (gate_first) launch(gated_norm_backward_kernel<TGate, TOut, true>);
    else launch(gated_norm_backward_kernel<TGate, TOut, false>);
  });
  PRIME_CUDA_CHECK_LAUNCH("gated_norm_backward_kernel");
}

}  // namespace prime::kernels::detail
