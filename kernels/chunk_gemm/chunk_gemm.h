// Batched fp32 products of chunk-sized matrices (out = alpha a b + beta out over a batch), on the
// TF32 tensor cores with the 3xTF32 split (fp32 accuracy), or with Precision::Bf16 on the bf16 tensor
// cores: each operand element rounded to bf16 as it is loaded, one MMA per step, fp32 accumulation
// (a third of the MMAs at twice the rate, far fewer instructions; a bf16 backward's products). The
// chunked SSM forms' backward multiplies thousands of small matrices per layer ([64 x 128] by
// [128 x 128] and the like, one per chunk and head); cuBLAS runs fp32 batched products on the CUDA
// cores' FMA path. Where the kernel does not apply (another device or dtype, shapes or strides it does
// not take, PRIME_KERNELS=torch) the same call runs at::baddbmm_out (Bf16: on the operands rounded to
// bf16 first, the same products), so callers need no second path.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

namespace prime::kernels {

// The products' arithmetic: fp32 accuracy (3xTF32), or bf16 operands with fp32 accumulation.
enum class GemmPrecision { Fp32, Bf16 };

// The batch is one to kMaxGemmBatchDims leading dims, the same sizes in every tensor of a call (out, a, b
// and the column scales): [batch..., m, k] and the like. Each batch dim has its own stride, so a
// per-chunk view of a time-major tensor ([B,T,H,D] as [B,H,T/64,64,D]) is an operand as it lies.
constexpr int kMaxGemmBatchDims = 3;

// Whether the kernel serves out [batch..., m, n] = a [batch..., m, k] b [batch..., k, n]: policy Auto,
// fp32 CUDA tensors on one device (with Bf16 products a and b may also be bf16: read as they are, half
// the traffic); m and n multiples of 16, k of 8; a and b each with one of their last two strides 1
// (either orientation: transposed views are served without a copy), the other and the batch strides
// multiples of 16 bytes (4 floats, 8 bf16), 16-byte aligned; out's last stride 1, its others even; out
// not one of a and b.
bool chunk_gemm_apply(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                      GemmPrecision precision = GemmPrecision::Fp32);

// out = alpha a b + beta out (beta = 0: out's contents are not read, as baddbmm); a bf16 operand (either
// precision) is taken at its exact value. column_scale,
// if defined, [batch..., n] fp32 with its last stride 1: out = alpha (a b) diag(column_scale) + beta
// out, the scale applied to the product alone (a row-scaled B^T without forming it).
void chunk_gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double alpha, double beta,
                const at::Tensor& column_scale = at::Tensor(), GemmPrecision precision = GemmPrecision::Fp32);

// alpha a b (diag(column_scale)) in a new contiguous tensor of the operands' dtype (fp32 for bf16 ones).
at::Tensor chunk_matmul(const at::Tensor& a, const at::Tensor& b, double alpha = 1.0,
                        const at::Tensor& column_scale = at::Tensor(), GemmPrecision precision = GemmPrecision::Fp32);

// One term of a sum of products: alpha a b, times diag(column_scale) where it is defined; then, where
// row_scale ([batch..., m] fp32, last stride 1) is defined, diag(row_scale) times that. Where dot_with is
// defined (out's shape, fp32 or bf16, last stride 1), the term also gives the dots of its rows with
// dot_with's before the row scale: dots [batch..., ceil(n / 64), m] fp32 (last stride 1), entry [..., j, i]
// the sum over columns [64 j, 64 j + 64) of (alpha a b diag(column_scale))_ic dot_with_ic. A row's dot is
// left in 64-column parts, so that a kernel block writes its own; the caller sums them (a fixed order:
// deterministic). A row-scaled product whose dot feeds another gradient (the chain rule's
// dq = d(QK^T) K + diag(e^Gamma) dO S^T, d_Gamma += e^Gamma (dO S^T . q)) is then one pass over out.
struct GemmTerm {
  GemmTerm() = default;
  GemmTerm(at::Tensor a_in, at::Tensor b_in, double alpha_in = 1.0, at::Tensor column_scale_in = at::Tensor())
      : a(std::move(a_in)), b(std::move(b_in)), alpha(alpha_in), column_scale(std::move(column_scale_in)) {}
  at::Tensor a, b;
  double alpha = 1.0;
  at::Tensor column_scale;
  at::Tensor row_scale;
  at::Tensor dot_with, dots;
};

// out = the terms' sum + beta out, in one pass over out: each term's product formed as chunk_gemm forms it
// and added to the running fp32 sum in turn, so the same bits as chunk_gemm on the first term (with beta)
// and then on each further term with beta 1, without writing and reading out back between them. out may
// be bf16 with Bf16 products and beta 0 (a product meant only as another bf16 product's operand): the fp32
// sum rounded to nearest even as it is stored, the bits of the fp32 result's rounding, at half the
// traffic. The kernel takes up to kMaxGemmTerms terms of bf16 products whose operands share their dtypes
// (each served as chunk_gemm_apply says; depths may differ) and their orientations, or, with bf16 operands,
// whose orientations change once along the list (terms [0, s) one pair of orientations, [s, end) another);
// other sums run term by term.
constexpr int kMaxGemmTerms = 4;
// Whether the kernel takes the sum into out in one launch (what chunk_gemm_sum then does).
bool chunk_gemm_sum_apply(const at::Tensor& out, const std::vector<GemmTerm>& terms,
                          GemmPrecision precision = GemmPrecision::Fp32);
// chunk_gemm_sum_apply's conditions on the tensors alone (shapes, dtypes, strides, alignment; not their device
// or PRIME_KERNELS): what tests check on the CPU, where no sum is ever served.
bool chunk_gemm_sum_layouts_served(const at::Tensor& out, const std::vector<GemmTerm>& terms,
                                   GemmPrecision precision = GemmPrecision::Fp32);
void chunk_gemm_sum(at::Tensor& out, const std::vector<GemmTerm>& terms, double beta,
                    GemmPrecision precision = GemmPrecision::Fp32);

// The terms' sum in a new contiguous tensor of type `type` (undefined: the first term's product type).
at::Tensor chunk_matmul_sum(const std::vector<GemmTerm>& terms, GemmPrecision precision = GemmPrecision::Fp32,
                            at::ScalarType type = at::ScalarType::Undefined);

}  // namespace prime::kernels
