// Dispatch of kernels/linear_decode: which operands the decode projection serves, and the calls
// that shape x into rows, allocate the outputs and launch.
#include "kernels/linear_decode/linear_decode.h"

#include <ATen/autocast_mode.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <vector>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/linear_decode/linear_decode_launch.h"
#endif

namespace prime::kernels {

namespace {

constexpr int kNoGridOverride = -1;
std::atomic<int> grid_override{kNoGridOverride};

bool aligned16(const at::Tensor& tensor) { return reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0; }

// x's sizes with the last one N.
std::vector<int64_t> output_sizes(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  return sizes;
}

#ifdef PRIME_WITH_CUDA
// x as contiguous, 16-byte aligned rows [rows, K]: a few rows, so a copy (which the allocator
// aligns) costs nothing next to reading W.
at::Tensor rows_of(const at::Tensor& x) {
  at::Tensor rows = x.reshape({-1, x.size(-1)}).contiguous();
  if (!aligned16(rows)) rows = rows.clone();
  return rows;
}

bool one_wave() { return linear_decode_grid() == LinearDecodeGrid::OneWave; }
#endif

}  // namespace

bool linear_decode_apply(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!x.defined() || !weight.defined() || !use_cuda_kernels(x)) return false;
  // The kernel is not differentiable: a call autograd would record runs at::linear.
  if (records_gradient(x) || records_gradient(weight) || records_gradient(bias)) return false;
  // Under autocast at::linear computes in the autocast dtype; the mixers that leave autocast
  // exclude its dispatch key, which this reads.
  if (at::autocast::is_autocast_enabled(at::kCUDA)) return false;
  const at::ScalarType type = x.scalar_type();
  if (!served_float_type(type) || weight.scalar_type() != type || weight.device() != x.device()) return false;
  if (x.dim() < 1 || weight.dim() != 2 || !weight.is_contiguous() || !aligned16(weight)) return false;
  const int64_t K = x.size(-1), N = weight.size(0);
  const int64_t per_pack = 16 / static_cast<int64_t>(x.element_size());  // 16-byte packs of K
  if (K < 1 || K % per_pack != 0 || weight.size(1) != K || N < 1 || N > INT_MAX) return false;
  const int64_t rows = x.numel() / K;
  if (rows < 1 || rows > kLinearDecodeMaxRows) return false;
  return !bias.defined() || (bias.dim() == 1 && bias.size(0) == N && bias.scalar_type() == type &&
                             bias.device() == x.device());
}

at::Tensor linear_decode(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return linear_decode_group(x, {weight}, {bias}).front();
}

std::vector<at::Tensor> linear_decode_group(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  PRIME_CHECK(!weights.empty() && static_cast<int64_t>(weights.size()) <= kLinearDecodeMaxGroup,
              "linear_decode: ", weights.size(), " weights in one launch, 1 to ", kLinearDecodeMaxGroup,
              " are served");
  PRIME_CHECK(biases.empty() || biases.size() == weights.size(), "linear_decode: ", biases.size(), " biases for ",
              weights.size(), " weights");
  std::vector<at::Tensor> bias_list(weights.size());
  int64_t rows_of_w = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (!biases.empty()) bias_list[i] = biases[i];
    PRIME_CHECK(linear_decode_apply(x, weights[i], bias_list[i]), "linear_decode: operands the kernel does not serve (x ",
                x.sizes(), " ", x.scalar_type(), ", weight ", weights[i].sizes(), " ", weights[i].scalar_type(),
                "); ask linear_decode_apply first");
    rows_of_w += weights[i].size(0);
  }
  PRIME_CHECK(rows_of_w <= INT_MAX, "linear_decode: ", rows_of_w, " rows of W in one launch");
  require_cuda_build("linear_decode");
  std::vector<at::Tensor> outs;
  for (const at::Tensor& weight : weights) outs.push_back(new_output(output_sizes(x, weight.size(0)), x.options()));
#ifdef PRIME_WITH_CUDA
  std::vector<at::Tensor> out_rows;
  for (size_t i = 0; i < outs.size(); ++i) {
    out_rows.push_back(outs[i].view({-1, weights[i].size(0)}));
    if (bias_list[i].defined()) bias_list[i] = bias_list[i].contiguous();
  }
  detail::launch_linear_decode(rows_of(x), weights, bias_list, out_rows, one_wave());
#endif
  return outs;
}

at::Tensor linear_decode_gated_silu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up) {
  PRIME_CHECK(linear_decode_apply(x, gate, at::Tensor()) && linear_decode_apply(x, up, at::Tensor()) &&
                  gate.sizes() == up.sizes(),
              "linear_decode (gated silu): operands the kernel does not serve (x ", x.sizes(), " ", x.scalar_type(),
              ", gate ", gate.sizes(), ", up ", up.sizes(), "); ask linear_decode_apply first");
  require_cuda_build("linear_decode");
  at::Tensor out = new_output(output_sizes(x, gate.size(0)), x.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_linear_decode_gated_silu(rows_of(x), gate, up, out.view({-1, gate.size(0)}), one_wave());
#endif
  return out;
}

LinearDecodeGrid linear_decode_grid() {
  const int forced = grid_override.load();
  return forced == kNoGridOverride ? LinearDecodeGrid::OneWave : static_cast<LinearDecodeGrid>(forced);
}

ScopedLinearDecodeGrid::ScopedLinearDecodeGrid(LinearDecodeGrid grid)
    : previous_(grid_override.exchange(static_cast<int>(grid))) {}

ScopedLinearDecodeGrid::~ScopedLinearDecodeGrid() { grid_override.store(previous_); }

}  // namespace prime::kernels
