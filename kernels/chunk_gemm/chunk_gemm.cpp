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

// One of the last two strides 1, the other and the batch stride multiples of a 16-byte vector (4 floats,
// 8 bf16), 16-byte aligned.
bool served_operand(const at::Tensor& x) {
  const int64_t vector = x.scalar_type() == at::kBFloat16 ? 8 : 4;
  const int64_t s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2);
  const bool rows = s2 == 1 && s1 % vector == 0 && s1 >= x.size(2);
  const bool columns = s1 == 1 && s2 % vector == 0 && s2 >= x.size(1);
  return (rows || columns) && s0 % vector == 0 && s0 >= 0 && aligned16(x);
}

// A product's dtype: the operands', or fp32 for bf16 ones (their exact values).
at::ScalarType product_type(const at::Tensor& a, const at::Tensor& b) {
  const auto widened = [](at::ScalarType t) { return t == at::kBFloat16 ? at::kFloat : t; };
  return at::promote_types(widened(a.scalar_type()), widened(b.scalar_type()));
}

}  // namespace

bool chunk_gemm_apply(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, GemmPrecision precision) {
  if (!out.defined() || !a.defined() || !b.defined() || !use_cuda_kernels(a)) return false;
  for (const at::Tensor* t : {&out, &a, &b}) {
    const bool bf16_operand = t != &out && precision == GemmPrecision::Bf16 && t->scalar_type() == at::kBFloat16;
    if ((t->scalar_type() != at::kFloat && !bf16_operand) || t->device() != a.device() || t->dim() != 3) return false;
  }
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
  if (precision == GemmPrecision::Fp32 && (a.scalar_type() == at::kBFloat16 || b.scalar_type() == at::kBFloat16)) {
    chunk_gemm(out, a.to(out.scalar_type()), b.to(out.scalar_type()), alpha, beta, column_scale, precision);
    return;
  }
  const bool scale_served = !column_scale.defined() ||
                            (column_scale.scalar_type() == at::kFloat && column_scale.stride(1) == 1);
  if (!scale_served || !chunk_gemm_apply(out, a, b, precision)) {
    // Bf16: the same products as the kernel's, of the operands rounded to bf16 (exact in out's dtype); bf16
    // operands in out's dtype (exact).
    const auto operand = [&](const at::Tensor& x) {
      return precision == GemmPrecision::Bf16 ? x.to(at::kBFloat16).to(out.scalar_type()) : x.to(out.scalar_type());
    };
    const at::Tensor a_in = operand(a), b_in = operand(b);
    if (!column_scale.defined()) {
      at::baddbmm_out(out, out, a_in, b_in, beta, alpha);
    } else {
      const at::Tensor product = at::bmm(a_in, b_in).mul_(column_scale.unsqueeze(1).to(out.scalar_type()));
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
  at::Tensor out = at::empty({a.size(0), a.size(1), b.size(2)}, a.options().dtype(product_type(a, b)));
  chunk_gemm(out, a, b, alpha, 0.0, column_scale, precision);
  return out;
}

}  // namespace prime::kernels
