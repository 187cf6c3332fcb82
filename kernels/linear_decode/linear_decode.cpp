// Dispatch of kernels/linear_decode: which operands the decode projection serves, and the call
// that shapes x into rows, allocates the output and launches.
#include "kernels/linear_decode/linear_decode.h"

#include <ATen/autocast_mode.h>

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

bool aligned16(const at::Tensor& tensor) { return reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0; }

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
  PRIME_CHECK(linear_decode_apply(x, weight, bias), "linear_decode: operands the kernel does not serve (x ",
              x.sizes(), " ", x.scalar_type(), ", weight ", weight.sizes(), " ", weight.scalar_type(),
              "); ask linear_decode_apply first");
  require_cuda_build("linear_decode");
  const int64_t N = weight.size(0);
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  at::Tensor out = new_output(sizes, x.options());
#ifdef PRIME_WITH_CUDA
  // x is a few rows: a copy (which the allocator aligns) costs nothing next to reading W.
  at::Tensor rows = x.reshape({-1, x.size(-1)}).contiguous();
  if (!aligned16(rows)) rows = rows.clone();
  detail::launch_linear_decode(rows, weight, bias.defined() ? bias.contiguous() : bias, out.view({-1, N}));
#endif
  return out;
}

}  // namespace prime::kernels
