// Dispatch of kernels/chunk_gemm: which operands the kernel serves, and at::baddbmm_out for the
// others.
#include "kernels/chunk_gemm/chunk_gemm.h"

#include <climits>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/chunk_gemm/chunk_gemm_launch.h"
#endif

namespace prime::kernels {

namespace {

bool aligned16(const at::Tensor& x) { return reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0; }

// The batch dims: all but the last two.
int64_t batch_dims(const at::Tensor& x) { return x.dim() - 2; }
at::IntArrayRef batch_sizes(const at::Tensor& x) { return x.sizes().slice(0, batch_dims(x)); }

// One of the last two strides 1, the other and the batch strides multiples of a 16-byte vector (4 floats,
// 8 bf16), 16-byte aligned.
bool served_operand(const at::Tensor& x) {
  const int64_t vector = x.scalar_type() == at::kBFloat16 ? 8 : 4;
  const int64_t s1 = x.stride(-2), s2 = x.stride(-1);
  const bool rows = s2 == 1 && s1 % vector == 0 && s1 >= x.size(-1);
  const bool columns = s1 == 1 && s2 % vector == 0 && s2 >= x.size(-2);
  for (int64_t dim = 0; dim < batch_dims(x); ++dim)
    if (x.stride(dim) % vector != 0 || x.stride(dim) < 0) return false;
  return (rows || columns) && aligned16(x);
}

// [batch..., r, c] as [batch, r, c]: a view where the batch dims' strides allow it, else a copy.
at::Tensor one_batch_dim(const at::Tensor& x) { return batch_dims(x) == 1 ? x : x.flatten(0, batch_dims(x) - 1); }

// A product's dtype: the operands', or fp32 for bf16 ones (their exact values).
at::ScalarType product_type(const at::Tensor& a, const at::Tensor& b) {
  const auto widened = [](at::ScalarType t) { return t == at::kBFloat16 ? at::kFloat : t; };
  return at::promote_types(widened(a.scalar_type()), widened(b.scalar_type()));
}

// The kernel's conditions on out and one product's operands (chunk_gemm_apply's); out fp32, or bf16 where
// `bf16_out` (with bf16 products); with `layouts_only`, not the device and policy (tests of the rest on the CPU).
bool served(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, GemmPrecision precision, bool bf16_out,
            bool layouts_only = false) {
  if (!out.defined() || !a.defined() || !b.defined() || !(layouts_only || use_cuda_kernels(a))) return false;
  const int64_t dims = out.dim();
  if (dims < 3 || dims > 2 + kMaxGemmBatchDims) return false;
  for (const at::Tensor* t : {&out, &a, &b}) {
    const bool bf16 = t->scalar_type() == at::kBFloat16 && precision == GemmPrecision::Bf16 && (t != &out || bf16_out);
    if ((t->scalar_type() != at::kFloat && !bf16) || t->device() != a.device() || t->dim() != dims) return false;
  }
  if (batch_sizes(a) != batch_sizes(out) || batch_sizes(b) != batch_sizes(out)) return false;
  const int64_t batch = c10::multiply_integers(batch_sizes(out)), m = a.size(-2), k = a.size(-1), n = b.size(-1);
  if (b.size(-2) != k || out.size(-2) != m || out.size(-1) != n) return false;
  if (batch < 1 || batch > INT_MAX || m % 16 != 0 || n % 16 != 0 || k % 8 != 0 || m == 0 || n == 0 || k == 0)
    return false;
  if (m > 65535 * 64 || n > 65535 * 64 || k > INT_MAX / 2) return false;  // the grid's y and z
  if (!served_operand(a) || !served_operand(b)) return false;
  if (out.stride(-1) != 1 || out.stride(-2) % 2 != 0 || out.stride(-2) < n) return false;
  for (int64_t dim = 0; dim < batch_dims(out); ++dim)
    if (out.stride(dim) % 2 != 0) return false;
  if (reinterpret_cast<uintptr_t>(out.data_ptr()) % 8 != 0) return false;
  return out.data_ptr() != a.data_ptr() && out.data_ptr() != b.data_ptr();
}

// A term's row scale and row dots as the kernel takes them (none, or as GemmTerm says, on out's device).
bool row_terms_served(const GemmTerm& term, const at::Tensor& out) {
  const int64_t dims = batch_dims(out), m = out.size(-2), n = out.size(-1);
  const at::Tensor &scale = term.row_scale, &with = term.dot_with, &dots = term.dots;
  if (scale.defined() && (scale.scalar_type() != at::kFloat || scale.device() != out.device() ||
                          scale.dim() != dims + 1 || scale.sizes().slice(0, dims) != batch_sizes(out) ||
                          scale.size(-1) != m ||
                          scale.stride(-1) != 1))
    return false;
  if (!with.defined()) return true;
  const bool bf16 = with.scalar_type() == at::kBFloat16;
  if ((!bf16 && with.scalar_type() != at::kFloat) || with.device() != out.device() || with.sizes() != out.sizes() ||
      with.stride(-1) != 1 || with.stride(-2) % 2 != 0 ||
      reinterpret_cast<uintptr_t>(with.data_ptr()) % (bf16 ? 4 : 8) != 0)
    return false;
  for (int64_t dim = 0; dim < dims; ++dim)
    if (with.stride(dim) % 2 != 0) return false;
  return dots.scalar_type() == at::kFloat && dots.device() == out.device() && dots.dim() == dims + 2 &&
         dots.size(-2) == (n + 63) / 64 && dots.size(-1) == m && dots.stride(-1) == 1 &&
         batch_sizes(dots) == batch_sizes(out);
}

// Whether one launch takes the whole sum: one term, or bf16 products' terms, every one served, their
// operands in the same dtypes and orientations (one kernel instance; with bf16 operands, two runs of
// terms in two pairs of orientations), their column scales fp32 with the last stride 1, their row scales
// and dots as row_terms_served says.
bool sum_served(const at::Tensor& out, const std::vector<GemmTerm>& terms, GemmPrecision precision,
                bool layouts_only = false) {
  if (terms.empty() || terms.size() > static_cast<size_t>(kMaxGemmTerms)) return false;
  if (terms.size() > 1 && precision != GemmPrecision::Bf16) return false;
  const GemmTerm& first = terms.front();
  const bool bf16_operands = first.a.scalar_type() == at::kBFloat16 && first.b.scalar_type() == at::kBFloat16;
  const auto orientation = [](const GemmTerm& term) {
    return std::make_pair(term.a.stride(-1) == 1, term.b.stride(-1) == 1);
  };
  int groups = 1;
  for (size_t i = 0; i < terms.size(); ++i) {
    const GemmTerm& term = terms[i];
    if (!served(out, term.a, term.b, precision, true, layouts_only) || !row_terms_served(term, out)) return false;
    if (term.a.scalar_type() != first.a.scalar_type() || term.b.scalar_type() != first.b.scalar_type()) return false;
    if (i > 0 && orientation(term) != orientation(terms[i - 1])) ++groups;
    if (term.column_scale.defined() &&
        (term.column_scale.scalar_type() != at::kFloat || term.column_scale.stride(-1) != 1))
      return false;
  }
  return groups == 1 || (groups == 2 && bf16_operands);
}

// Entry [..., j, i] of a term's dots from its product p (before the row scale) and dot_with: row i's sum
// over columns [64 j, 64 j + 64).
at::Tensor tile_dots(const at::Tensor& p, const at::Tensor& with) {
  const int64_t n = p.size(-1), tiles = (n + 63) / 64;
  at::Tensor products = p * with.to(p.scalar_type());
  if (tiles * 64 > n) products = at::constant_pad_nd(products, {0, tiles * 64 - n});
  std::vector<int64_t> shape = products.sizes().vec();
  shape.back() = tiles;
  shape.push_back(64);
  return products.view(shape).sum(-1).transpose(-1, -2);
}

// One product into an fp32 (or float64 off the kernel) out, on the kernel where it serves, else baddbmm.
void one_product(at::Tensor& out, const GemmTerm& term, double beta, GemmPrecision precision) {
  const at::Tensor &a = term.a, &b = term.b, &column_scale = term.column_scale;
  const double alpha = term.alpha;
  const bool scale_served = !column_scale.defined() ||
                            (column_scale.scalar_type() == at::kFloat && column_scale.stride(-1) == 1);
  if (scale_served && served(out, a, b, precision, false)) {
#ifdef PRIME_WITH_CUDA
    detail::launch_chunk_gemm(out, {term}, static_cast<float>(beta), precision == GemmPrecision::Bf16);
    return;
#endif
  }
  // Bf16: the same products as the kernel's, of the operands rounded to bf16 (exact in out's dtype); bf16
  // operands in out's dtype (exact).
  const auto operand = [&](const at::Tensor& x) {
    return precision == GemmPrecision::Bf16 ? x.to(at::kBFloat16).to(out.scalar_type()) : x.to(out.scalar_type());
  };
  const at::Tensor a_in = one_batch_dim(operand(a)), b_in = one_batch_dim(operand(b));
  // out with one batch dim: a view of out where its strides allow, else a copy written back.
  at::Tensor flat = one_batch_dim(out);
  const bool view = flat.is_alias_of(out);
  if (!column_scale.defined()) {
    at::baddbmm_out(flat, flat, a_in, b_in, beta, alpha);
  } else {
    const at::Tensor product =
        at::bmm(a_in, b_in).mul_(one_batch_dim(column_scale.unsqueeze(-2)).to(out.scalar_type()));
    if (beta == 0.0)
      flat.copy_(product.mul_(alpha));
    else
      flat.mul_(beta).add_(product, alpha);
  }
  if (!view) out.copy_(flat.view(out.sizes()));
}

}  // namespace

bool chunk_gemm_apply(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, GemmPrecision precision) {
  return served(out, a, b, precision, false);
}

bool chunk_gemm_sum_apply(const at::Tensor& out, const std::vector<GemmTerm>& terms, GemmPrecision precision) {
  return sum_served(out, terms, precision);
}

bool chunk_gemm_sum_layouts_served(const at::Tensor& out, const std::vector<GemmTerm>& terms, GemmPrecision precision) {
  return sum_served(out, terms, precision, true);
}

void chunk_gemm_sum(at::Tensor& out, const std::vector<GemmTerm>& terms, double beta, GemmPrecision precision) {
  PRIME_CHECK(!terms.empty(), "chunk_gemm_sum: no terms to sum");
  bool bf16_operands = false;
  for (const GemmTerm& term : terms) {
    PRIME_CHECK(term.a.defined() && term.b.defined() && term.a.dim() >= 3 &&
                    term.a.dim() <= 2 + kMaxGemmBatchDims && term.b.dim() == term.a.dim() &&
                    batch_sizes(term.a) == batch_sizes(term.b) && term.a.size(-1) == term.b.size(-2),
                "chunk_gemm: operands ", term.a.sizes(), " and ", term.b.sizes(),
                " do not multiply as batches of 1 to ", kMaxGemmBatchDims, " dims");
    PRIME_CHECK(out.dim() == term.a.dim() && batch_sizes(out) == batch_sizes(term.a) &&
                    out.size(-2) == term.a.size(-2) && out.size(-1) == term.b.size(-1),
                "chunk_gemm: out ", out.sizes(), " for a product of ", term.a.sizes(), " and ", term.b.sizes());
    if (term.row_scale.defined())
      PRIME_CHECK(term.row_scale.dim() == term.a.dim() - 1 &&
                      term.row_scale.sizes().slice(0, batch_dims(term.a)) == batch_sizes(term.a) &&
                      term.row_scale.size(-1) == term.a.size(-2) && term.row_scale.device() == term.a.device(),
                  "chunk_gemm: row scale ", term.row_scale.sizes(), " for a product of ", term.a.sizes(), " and ",
                  term.b.sizes());
    PRIME_CHECK(term.dot_with.defined() == term.dots.defined(), "chunk_gemm: a term's dot_with and dots come together");
    if (term.dot_with.defined())
      PRIME_CHECK(term.dot_with.sizes() == out.sizes() && term.dots.scalar_type() == at::kFloat &&
                      term.dots.dim() == out.dim() && term.dots.sizes().slice(0, batch_dims(out)) == batch_sizes(out) &&
                      term.dots.size(-2) == (out.size(-1) + 63) / 64 && term.dots.size(-1) == out.size(-2) &&
                      term.dot_with.device() == out.device() && term.dots.device() == out.device(),
                  "chunk_gemm: dot_with ", term.dot_with.sizes(), " and dots ", term.dots.sizes(), " for out ",
                  out.sizes(), " (want out's shape and fp32 [batch..., ceil(n / 64), m])");
    if (term.column_scale.defined())
      PRIME_CHECK(term.column_scale.dim() == term.a.dim() - 1 &&
                      term.column_scale.sizes().slice(0, batch_dims(term.b)) == batch_sizes(term.b) &&
                      term.column_scale.size(-1) == term.b.size(-1) && term.column_scale.device() == term.a.device(),
                  "chunk_gemm: column scale ", term.column_scale.sizes(), " for a product of ", term.a.sizes(),
                  " and ", term.b.sizes());
    bf16_operands = bf16_operands || term.a.scalar_type() == at::kBFloat16 || term.b.scalar_type() == at::kBFloat16;
  }
  const bool bf16_out = out.scalar_type() == at::kBFloat16;
  PRIME_CHECK(!bf16_out || (precision == GemmPrecision::Bf16 && beta == 0.0),
              "chunk_gemm: a bf16 out takes bf16 products and beta 0");
  if (precision == GemmPrecision::Fp32 && bf16_operands) {  // their exact values in out's dtype
    std::vector<GemmTerm> widened = terms;
    for (GemmTerm& term : widened) term.a = term.a.to(out.scalar_type()), term.b = term.b.to(out.scalar_type());
    chunk_gemm_sum(out, widened, beta, precision);
    return;
  }
  if (sum_served(out, terms, precision)) {
#ifdef PRIME_WITH_CUDA
    detail::launch_chunk_gemm(out, terms, static_cast<float>(beta), precision == GemmPrecision::Bf16);
    return;
#else
    require_cuda_build("chunk_gemm");
#endif
  }
  if (bf16_out) {  // the fp32 sum, rounded to nearest even as it is copied
    at::Tensor sum = at::empty(out.sizes(), out.options().dtype(at::kFloat));
    chunk_gemm_sum(sum, terms, 0.0, precision);
    out.copy_(sum);
    return;
  }
  for (size_t i = 0; i < terms.size(); ++i) {
    const GemmTerm& term = terms[i];
    const double term_beta = i == 0 ? beta : 1.0;
    if (!term.row_scale.defined() && !term.dot_with.defined()) {
      one_product(out, term, term_beta, precision);
      continue;
    }
    // The product apart (alpha a b diag(column_scale)), its dots, its row scale, then into out.
    at::Tensor product = at::empty(out.sizes(), out.options());
    one_product(product, GemmTerm{term.a, term.b, term.alpha, term.column_scale}, 0.0, precision);
    if (term.dot_with.defined()) term.dots.copy_(tile_dots(product, term.dot_with));
    if (term.row_scale.defined()) product.mul_(term.row_scale.unsqueeze(-1).to(product.scalar_type()));
    if (term_beta == 0.0)
      out.copy_(product);
    else if (term_beta == 1.0)
      out.add_(product);
    else
      out.mul_(term_beta).add_(product);
  }
}

void chunk_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double alpha, double beta,
                const at::Tensor& column_scale, GemmPrecision precision) {
  chunk_gemm_sum(out, {GemmTerm{a, b, alpha, column_scale}}, beta, precision);
}

at::Tensor chunk_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, const at::Tensor& column_scale,
                        GemmPrecision precision) {
  return chunk_matmul_sum({GemmTerm{a, b, alpha, column_scale}}, precision);
}

at::Tensor chunk_matmul_sum(const std::vector<GemmTerm>& terms, GemmPrecision precision, at::ScalarType type) {
  PRIME_CHECK(!terms.empty(), "chunk_matmul: no terms to sum");
  const at::Tensor &a = terms.front().a, &b = terms.front().b;
  PRIME_CHECK(a.dim() >= 3 && a.dim() <= 2 + kMaxGemmBatchDims && b.dim() == a.dim() &&
                  batch_sizes(a) == batch_sizes(b) && a.size(-1) == b.size(-2),
              "chunk_matmul: operands ", a.sizes(), " and ", b.sizes(), " do not multiply as batches of 1 to ",
              kMaxGemmBatchDims, " dims");
  std::vector<int64_t> shape = batch_sizes(a).vec();
  shape.push_back(a.size(-2));
  shape.push_back(b.size(-1));
  at::Tensor out = at::empty(shape, a.options().dtype(type == at::ScalarType::Undefined ? product_type(a, b) : type));
  chunk_gemm_sum(out, terms, 0.0, precision);
  return out;
}

}  // namespace prime::kernels
