// Host side of kernels/gka_solve: operands broadcast to q's leading dims, flattened and made
// contiguous for the launchers; the backward's per-chunk gradients reshaped to q's leading dims.
#include "kernels/gka_solve/gka_solve.h"

#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/common/switches.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/gka_solve/gka_solve_launch.h"
#endif

namespace prime::kernels {

namespace {

// `tensor` broadcast to lead + tail, as a contiguous [M, tail...] tensor starting on 16 bytes (the bf16
// kernel reads q, keys and H_0 in pairs).
at::Tensor flat(const at::Tensor& tensor, at::IntArrayRef lead, std::vector<int64_t> tail, const char* name) {
  std::vector<int64_t> sizes(lead.begin(), lead.end());
  sizes.insert(sizes.end(), tail.begin(), tail.end());
  PRIME_CHECK(tensor.defined() && tensor.scalar_type() == at::kFloat, "gka_chunk_solve: ", name,
              " must be an fp32 tensor");
  tail.insert(tail.begin(), -1);
  return contiguous_aligned(tensor.expand(sizes).reshape(tail), 16);
}

// lead + tail.
std::vector<int64_t> with_tail(at::IntArrayRef lead, std::initializer_list<int64_t> tail) {
  std::vector<int64_t> sizes(lead.begin(), lead.end());
  sizes.insert(sizes.end(), tail);
  return sizes;
}

}  // namespace

bool gka_chunk_solve_apply(const at::Tensor& q) {
  if (!use_cuda_kernels(q) || q.scalar_type() != at::kFloat || q.dim() < 3) return false;
  const int64_t C = q.size(-2), D = q.size(-1);
  if (C < 1 || C > 64 || D < 16 || D > 128 || D % 16 != 0) return false;
#ifdef PRIME_WITH_CUDA
  return detail::gka_chunk_solve_fits(q.device(), C, D);
#else
  return true;  // never reached: use_cuda_kernels is false without the CUDA build
#endif
}

namespace {

// The fp32 solve's products named by environment variable `variable`: "tf32x3" or "bf16x3", unset
// `otherwise`.
SolveProducts fp32_products_from(const char* variable, SolveProducts otherwise) {
  const SwitchValue<SolveProducts> tf32{"tf32x3", SolveProducts::Tf32x3, "three TF32 MMAs per step"};
  const SwitchValue<SolveProducts> bf16{"bf16x3", SolveProducts::Bf16x3, "three bf16 MMAs per step on split operands"};
  return otherwise == SolveProducts::Tf32x3 ? environment_switch<SolveProducts>(variable, {tf32, bf16})
                                            : environment_switch<SolveProducts>(variable, {bf16, tf32});
}

}  // namespace

SolveProducts gka_fp32_solve_products() {
  return fp32_products_from("PRIME_GKA_SOLVE_PRODUCTS", SolveProducts::Tf32x3);
}

// tf32x3 unset: bf16x3 keeps the kernel's own tests' fp32 bound (1.4e-5 of float64) and is 1.08x faster
// fwd+bwd on an H100 at (1,4096,32,128), but with it the whole-hybrid fp32 test's GKA gradients came out
// ~50x further from float64 than with 3xTF32 before it (kernels/README.md, gka_solve v9).
SolveProducts gka_backward_products() {
  return fp32_products_from("PRIME_GKA_BACKWARD_PRODUCTS", SolveProducts::Tf32x3);
}

at::Tensor gka_chunk_solve(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                           const at::Tensor& weights, const at::Tensor& from_start,
                           const at::Tensor& frob, double ridge_strength, int num_iter,
                           at::Tensor* iterates, SolveProducts products, IterateLayout layout) {
  PRIME_CHECK(gka_chunk_solve_apply(q), "gka_chunk_solve: operands the kernel does not serve (q ",
              q.sizes(), "); ask gka_chunk_solve_apply first");
  PRIME_CHECK(num_iter >= 1, "gka_chunk_solve: num_iter ", num_iter);
  require_cuda_build("gka_chunk_solve");
  const int64_t C = q.size(-2), D = q.size(-1);
  const at::IntArrayRef lead = q.sizes().slice(0, q.dim() - 2);
  const at::Tensor q3 = flat(q, lead, {C, D}, "q");
  const int64_t M = q3.size(0);
  at::Tensor x = new_output(q3.sizes(), q3.options());
  at::Tensor all;
  const bool chunk_major = layout == IterateLayout::ChunkMajor;
  if (iterates)
    all = new_output(chunk_major ? std::vector<int64_t>{M, num_iter, C, D} : std::vector<int64_t>{num_iter, M, C, D},
                     q3.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_gka_chunk_solve(q3, flat(keys, lead, {C, D}, "keys"), flat(start, lead, {D, D}, "start"),
                                 flat(weights, lead, {C, C}, "weights"),
                                 flat(from_start, lead, {C, 1}, "from_start").view({M, C}),
                                 flat(frob, lead, {C, 1}, "frob").view({M, C}), ridge_strength, num_iter,
                                 x, all, products, chunk_major);
#endif
  if (iterates) *iterates = all.view(chunk_major ? with_tail(lead, {num_iter, C, D}) : [&] {
    std::vector<int64_t> sizes{num_iter};
    sizes.insert(sizes.end(), q.sizes().begin(), q.sizes().end());
    return sizes;
  }());
  return x.view(q.sizes());
}

bool gka_chunk_solve_backward_apply(const at::Tensor& q, int num_iter) {
  if (!gka_chunk_solve_apply(q) || num_iter < 1) return false;
#ifdef PRIME_WITH_CUDA
  return detail::gka_chunk_solve_backward_fits(q.device(), q.size(-2), q.size(-1), num_iter);
#else
  return true;  // never reached: gka_chunk_solve_apply is false without the CUDA build
#endif
}

bool gka_chunk_solve_backward_enabled() {
  return environment_switch<bool>("PRIME_GKA_BACKWARD_KERNEL", {{"1", true, "the reverse sweep kernel"},
                                                                {"0", false, "the torch-ops sweep"}});
}

GkaSolveGradients gka_chunk_solve_backward(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                           const at::Tensor& weights, const at::Tensor& from_start,
                                           const at::Tensor& frob, double ridge_strength, int num_iter,
                                           const at::Tensor& iterates, const at::Tensor& grad,
                                           SolveProducts products) {
  PRIME_CHECK(products != SolveProducts::Bf16, "gka_chunk_solve_backward: the sweep keeps fp32 accuracy (Tf32x3 ",
              "or Bf16x3)");
  PRIME_CHECK(gka_chunk_solve_backward_apply(q, num_iter), "gka_chunk_solve_backward: operands the kernel does not ",
              "serve (q ", q.sizes(), ", N = ", num_iter, "); ask gka_chunk_solve_backward_apply first");
  require_cuda_build("gka_chunk_solve_backward");
  const int64_t C = q.size(-2), D = q.size(-1), padded = (C + 15) / 16 * 16;
  const at::IntArrayRef lead = q.sizes().slice(0, q.dim() - 2);
  PRIME_CHECK(iterates.defined() && iterates.dim() == q.dim() + 1 && iterates.size(0) == num_iter &&
                  iterates.sizes().slice(1) == q.sizes(),
              "gka_chunk_solve_backward: iterates ", iterates.defined() ? iterates.sizes() : at::IntArrayRef(),
              " must be [", num_iter, ", ", q.sizes(), "]");
  PRIME_CHECK(grad.defined() && grad.sizes() == q.sizes(), "gka_chunk_solve_backward: grad ",
              grad.defined() ? grad.sizes() : at::IntArrayRef(), " vs q ", q.sizes());
  const at::Tensor q3 = flat(q, lead, {C, D}, "q");
  const int64_t M = q3.size(0);
  PRIME_CHECK(iterates.scalar_type() == at::kFloat, "gka_chunk_solve_backward: iterates must be fp32");
  const at::Tensor all = iterates.reshape({num_iter, M, C, D}).contiguous();
  GkaSolveGradients per_chunk;
  per_chunk.q = new_output({M, C, D}, q3.options());
  per_chunk.keys = new_output({M, padded, D}, q3.options());
  per_chunk.start = new_output({M, D, D}, q3.options());
  per_chunk.weights = new_output({M, C, C}, q3.options());
  per_chunk.from_start = new_output({M, C}, q3.options());
  per_chunk.frob = new_output({M, C}, q3.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_gka_chunk_solve_backward(
      q3, flat(keys, lead, {C, D}, "keys"), flat(start, lead, {D, D}, "start"), flat(weights, lead, {C, C}, "weights"),
      flat(from_start, lead, {C, 1}, "from_start").view({M, C}), flat(frob, lead, {C, 1}, "frob").view({M, C}),
      ridge_strength, num_iter, all, flat(grad, lead, {C, D}, "grad"), per_chunk, products);
#endif
  GkaSolveGradients out;
  out.q = per_chunk.q.view(q.sizes());
  out.keys = per_chunk.keys.narrow(1, 0, C).reshape(q.sizes());
  out.start = per_chunk.start.view(with_tail(lead, {D, D}));
  out.weights = per_chunk.weights.view(with_tail(lead, {C, C}));
  out.from_start = per_chunk.from_start.view(with_tail(lead, {C, 1}));
  out.frob = per_chunk.frob.view(with_tail(lead, {C, 1}));
  return out;
}

bool gka_chunk_adjoint_apply(const at::Tensor& q, int num_iter) {
  if (!gka_chunk_solve_apply(q) || num_iter < 1 || q.size(-1) % 32 != 0) return false;
#ifdef PRIME_WITH_CUDA
  return detail::gka_chunk_adjoint_fits(q.device(), q.size(-2), q.size(-1), num_iter);
#else
  return true;  // never reached: gka_chunk_solve_apply is false without the CUDA build
#endif
}

GkaAdjoints gka_chunk_adjoint_recurrence(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                                         const at::Tensor& weights, const at::Tensor& from_start,
                                         const at::Tensor& frob, double ridge_strength, int num_iter,
                                         const at::Tensor& iterates, const at::Tensor& grad) {
  PRIME_CHECK(gka_chunk_adjoint_apply(q, num_iter), "gka_chunk_adjoint_recurrence: operands the kernel does not ",
              "serve (q ", q.sizes(), ", N = ", num_iter, "); ask gka_chunk_adjoint_apply first");
  require_cuda_build("gka_chunk_adjoint_recurrence");
  const int64_t C = q.size(-2), D = q.size(-1);
  const at::IntArrayRef lead = q.sizes().slice(0, q.dim() - 2);
  PRIME_CHECK(iterates.defined() && iterates.scalar_type() == at::kFloat &&
                  iterates.sizes() == at::IntArrayRef(with_tail(lead, {num_iter, C, D})),
              "gka_chunk_adjoint_recurrence: iterates must be fp32 chunk-major [", lead, ", ", num_iter, ", ", C, ", ",
              D, "], got ", iterates.defined() ? iterates.sizes() : at::IntArrayRef());
  PRIME_CHECK(grad.defined() && grad.sizes() == q.sizes(), "gka_chunk_adjoint_recurrence: grad ",
              grad.defined() ? grad.sizes() : at::IntArrayRef(), " vs q ", q.sizes());
  const at::Tensor q3 = flat(q, lead, {C, D}, "q");
  const int64_t M = q3.size(0);
  GkaAdjoints per_chunk;
  per_chunk.adjoints = new_output({M, num_iter, C, D}, q3.options());
  per_chunk.q = new_output({M, C, D}, q3.options());
  per_chunk.from_start = new_output({M, C}, q3.options());
  per_chunk.frob = new_output({M, C}, q3.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_gka_chunk_adjoint_mma(
      q3, flat(keys, lead, {C, D}, "keys"), flat(start, lead, {D, D}, "start"), flat(weights, lead, {C, C}, "weights"),
      flat(from_start, lead, {C, 1}, "from_start").view({M, C}), flat(frob, lead, {C, 1}, "frob").view({M, C}),
      ridge_strength, num_iter, iterates.reshape({M, num_iter, C, D}).contiguous(), flat(grad, lead, {C, D}, "grad"),
      per_chunk.adjoints, per_chunk.q, per_chunk.from_start, per_chunk.frob);
#endif
  GkaAdjoints out;
  out.adjoints = per_chunk.adjoints.view(with_tail(lead, {num_iter, C, D}));
  out.q = per_chunk.q.view(q.sizes());
  out.from_start = per_chunk.from_start.view(with_tail(lead, {C, 1}));
  out.frob = per_chunk.frob.view(with_tail(lead, {C, 1}));
  return out;
}

}  // namespace prime::kernels
