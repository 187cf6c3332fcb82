// Host side of kernels/gka_solve: operands broadcast to q's leading dims, flattened and made
// contiguous for the launcher.
#include "kernels/gka_solve/gka_solve.h"

#include <vector>

#include "kernels/common/policy.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/gka_solve/gka_solve_launch.h"
#endif

namespace prime::kernels {

namespace {

// `tensor` broadcast to lead + tail, as a contiguous [M, tail...] tensor.
at::Tensor flat(const at::Tensor& tensor, at::IntArrayRef lead, std::vector<int64_t> tail, const char* name) {
  std::vector<int64_t> sizes(lead.begin(), lead.end());
  sizes.insert(sizes.end(), tail.begin(), tail.end());
  PRIME_CHECK(tensor.defined() && tensor.scalar_type() == at::kFloat, "gka_chunk_solve: ", name,
              " must be an fp32 tensor");
  tail.insert(tail.begin(), -1);
  return tensor.expand(sizes).reshape(tail).contiguous();
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

at::Tensor gka_chunk_solve(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& start,
                           const at::Tensor& weights, const at::Tensor& from_start,
                           const at::Tensor& frob, double ridge_strength, int num_iter,
                           at::Tensor* iterates) {
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
  if (iterates) all = new_output({num_iter, M, C, D}, q3.options());
#ifdef PRIME_WITH_CUDA
  detail::launch_gka_chunk_solve(q3, flat(keys, lead, {C, D}, "keys"), flat(start, lead, {D, D}, "start"),
                                 flat(weights, lead, {C, C}, "weights"),
                                 flat(from_start, lead, {C, 1}, "from_start").view({M, C}),
                                 flat(frob, lead, {C, 1}, "frob").view({M, C}), ridge_strength, num_iter,
                                 x, all);
#endif
  if (iterates) {
    std::vector<int64_t> sizes{num_iter};
    sizes.insert(sizes.end(), q.sizes().begin(), q.sizes().end());
    *iterates = all.view(sizes);
  }
  return x.view(q.sizes());
}

}  // namespace prime::kernels
