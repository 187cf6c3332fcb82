// Dispatch of kernels/chunk_gemm: which operands the kernel serves, and at::baddbmm_out for the
// others.
#include "kernels/chunk_gemm/chunk_gemm.h"

#include <climits>
#include <cstdint>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/chunk_gemm/chunk_gemm_launch.h"
#endif

namespace prime::kernels {

namespace {

bool aligned16(const at::Tensor& x) { return reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0; }

// One of the last two strides 1, the other and the batch stride multiples of 4 floats.
bool served_operand(const at::Tensor& x) {
  const int64_t s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2);
  const bool rows = s2 == 1 && s1 % 4 == 0 && s1 >= x.size(2);
  const bool columns = s1 == 1 && s2 % 4 == 0 && s2 >= x.size(1);
  return (rows || columns) && s0 % 4 == 0 && s0 >= 0 && aligned16(x);
}

}  // namespace

bool chunk_gemm_apply(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!out.defined() || !a.defined() || !b.defined() || !use_cuda_kernels(a)) return false;
  for (const at::Tensor* t : {&out, &a, &b})
    if (t->scalar_type() != at::kFloat || t->device() != a.device() || t->dim() != 3) return false;
  const int64_t batch = a.size(0), m = a.size(1), k = a.size(2), n = b.size(2);
  if (b.size(0) != batch || b.size(1) != k || out.size(0) != batch || out.size(1) != m || out.size(2) != n)
    return false;
  if (batch < 1 || batch > INT_MAX || m % 16 != 0 || n % 16 != 0 || k % 8 != 0 || m == 0 || n == 0 || k == 0)
    return false;
  if (m > 65535 * 64 || n > 65535 * 64 || k > INT_MAX / 2) return false;  // the grid's y and z
  if (!served_operand(a) || !served_operand(b)) return false;
  if (out.stride(2) != 1 || out.stride(1) % 2 != 0 || out.stride(1) < n || out.stride(0) % 2 != 0) return false;
  if (reinterpret_cast<uintptr_t>(out.data_ptr()) % 8 != 0) return false;
  return out.data_ptr() != a.data_ptr() && out.data_ptr() != b.data_ptr();
}

void chunk_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double alpha, double beta,
                const at::Tensor& column_scale, GemmPrecision precision) {
  if (column_scale.defined())
    PRIME_CHECK(column_scale.dim() == 2 && column_scale.size(0) == a.size(0) && column_scale.size(1) == b.size(2) &&
                    column_scale.device() == a.device(),
                "chunk_gemm: column scale ", column_scale.sizes(), " for a product of ", a.sizes(), " and ", b.sizes());
  const bool scale_served = !column_scale.defined() ||
                            (column_scale.scalar_type() == at::kFloat && column_scale.stride(1) == 1);
  if (!scale_served || !chunk_gemm_apply(out, a, b)) {
    // Bf16: the same products as the kernel's, of the operands rounded to bf16 (exact in a's dtype).
    const auto operand = [&](const at::Tensor& x) {
      return precision == GemmPrecision::Bf16 ? x.to(at::kBFloat16).to(x.scalar_type()) : x;
    };
    const at::Tensor a_in = operand(a), b_in = operand(b);
    if (!column_scale.defined()) {
      at::baddbmm_out(out, out, a_in, b_in, beta, alpha);
    } else {
      const at::Tensor product = at::bmm(a_in, b_in).mul_(column_scale.unsqueeze(1).to(a.scalar_type()));
      if (beta == 0.0)
        out.copy_(product.mul_(alpha));
      else
        out.mul_(beta).add_(product, alpha);
    }
    return;
  }
#ifdef PRIME_WITH_CUDA
  detail::launch_chunk_gemm(out, a, b, static_cast<float>(alpha), static_cast<float>(beta), column_scale,
                            precision == GemmPrecision::Bf16);
#else
  require_cuda_build("chunk_gemm");
#endif
}

at::Tensor chunk_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, const at::Tensor& column_scale,
                        GemmPrecision precision) {
  PRIME_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(1),
              "chunk_matmul: operands ", a.sizes(), " and ", b.sizes(), " do not multiply as batches");
  at::Tensor out = at::empty({a.size(0), a.size(1), b.size(2)}, a.options());
  chunk_gemm(out, a, b, alpha, 0.0, column_scale, precision);
  return out;
}

}  // namespace prime::kernels
