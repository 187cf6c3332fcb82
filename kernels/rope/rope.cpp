// Dispatch of kernels/rope: which operands the fused rotation serves, and the call that
// allocates the outputs and launches.
#include "kernels/rope/rope.h"

#include <climits>
#include <cstdint>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/rope/rope_launch.h"
#endif

namespace prime::kernels {

namespace {

constexpr int64_t kMaxHeadElements = int64_t{1} << 26;  // (Hq + Hkv) * D

// cos or sin: fp32 [1 or B, T, 1, D] on `device`.
bool angle_table(const at::Tensor& table, int64_t B, int64_t T, int64_t D, const at::Device& device) {
  return table.defined() && table.scalar_type() == at::kFloat && table.device() == device && table.dim() == 4 &&
         (table.size(0) == 1 || table.size(0) == B) && table.size(1) == T && table.size(2) == 1 &&
         table.size(3) == D;
}

// A dimension of size 1 is never stepped along: its stride does not matter.
int64_t step_stride(const at::Tensor& x, int64_t dim) { return x.size(dim) == 1 ? 0 : x.stride(dim); }

bool aligned16(const at::Tensor& tensor) { return reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0; }

// Unit element stride, every row of D on a 16-byte pack of `width` elements.
bool rows_on_packs(const at::Tensor& x, int64_t width) {
  return x.stride(3) == 1 && step_stride(x, 0) % width == 0 && step_stride(x, 1) % width == 0 &&
         step_stride(x, 2) % width == 0 && aligned16(x);
}

bool norm_weight(const at::Tensor& weight, const at::Tensor& q) {
  return weight.defined() && !records_gradient(weight) && weight.dim() == 1 && weight.size(0) == q.size(3) &&
         weight.scalar_type() == q.scalar_type() && weight.device() == q.device() && weight.is_contiguous() &&
         aligned16(weight);
}

}  // namespace

bool rope_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin) {
  if (!q.defined() || !k.defined() || !use_cuda_kernels(q)) return false;
  // Inference only: the kernel is no autograd function.
  if (records_gradient(q) || records_gradient(k) || records_gradient(cos) || records_gradient(sin)) return false;
  if (q.dim() != 4 || k.dim() != 4 || !served_float_type(q.scalar_type()) || k.scalar_type() != q.scalar_type() ||
      k.device() != q.device())
    return false;
  const int64_t B = q.size(0), T = q.size(1), D = q.size(3);
  if (k.size(0) != B || k.size(1) != T || k.size(3) != D || D <= 0 || D % 2 != 0) return false;
  // The grid: B*T tokens, (Hq + Hkv) * D/2 threads at most per token (a few grid rows of them).
  if (B * T > INT_MAX || (q.size(2) + k.size(2)) * D > kMaxHeadElements) return false;
  return angle_table(cos, B, T, D, q.device()) && angle_table(sin, B, T, D, q.device()) &&
         cos.size(0) == sin.size(0);
}

std::pair<at::Tensor, at::Tensor> rope_rotate(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                              const at::Tensor& sin) {
  PRIME_CHECK(rope_apply(q, k, cos, sin), "rope_rotate: operands the kernel does not serve (q ", q.sizes(), " ",
              q.scalar_type(), ", k ", k.sizes(), ", cos ", cos.sizes(), "); ask rope_apply first");
  require_cuda_build("rope_rotate");
  at::Tensor q_out = new_output(q.sizes(), q.options());
  at::Tensor k_out = new_output(k.sizes(), k.options());
#ifdef PRIME_WITH_CUDA
  // The model's tables are contiguous already; contiguous() copies only a caller's strided one.
  detail::launch_rope(q, k, cos.contiguous(), sin.contiguous(), q_out, k_out);
#endif
  return {q_out, k_out};
}

bool rope_norm_apply(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_weight, const at::Tensor& k_weight,
                     const at::Tensor& cos, const at::Tensor& sin) {
  if (!rope_apply(q, k, cos, sin) || !norm_weight(q_weight, q) || !norm_weight(k_weight, q)) return false;
  const int64_t D = q.size(3), width = 16 / static_cast<int64_t>(q.element_size());
  if (D % (2 * width) != 0 || D / width > 32) return false;
  if (q.size(0) * q.size(1) * (q.size(2) + k.size(2)) > INT_MAX) return false;
  return rows_on_packs(q, width) && rows_on_packs(k, width) && cos.is_contiguous() && sin.is_contiguous() &&
         aligned16(cos) && aligned16(sin);
}

std::pair<at::Tensor, at::Tensor> rope_norm_rotate(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_weight,
                                                   const at::Tensor& k_weight, double eps, const at::Tensor& cos,
                                                   const at::Tensor& sin) {
  PRIME_CHECK(rope_norm_apply(q, k, q_weight, k_weight, cos, sin),
              "rope_norm_rotate: operands the kernel does not serve (q ", q.sizes(), " ", q.scalar_type(), ", k ",
              k.sizes(), ", weights ", q_weight.sizes(), ", cos ", cos.sizes(), "); ask rope_norm_apply first");
  require_cuda_build("rope_norm_rotate");
  at::Tensor q_out = new_output(q.sizes(), q.options());
  at::Tensor k_out = new_output(k.sizes(), k.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_rope_norm(q, k, q_weight, k_weight, eps, cos, sin, q_out, k_out);
#else
  (void)eps;
#endif
  return {q_out, k_out};
}

}  // namespace prime::kernels
