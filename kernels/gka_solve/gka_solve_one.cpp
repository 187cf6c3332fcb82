// Host side of the one-warpgroup solve (gka_solve_one.h).
#include "kernels/gka_solve/gka_solve_one.h"

#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include "kernels/gka_solve/gka_solve_launch.h"
#endif

namespace prime::kernels {

at::Tensor gka_solve_one_group(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& h0,
                               const at::Tensor& weights, const at::Tensor& from_start, const at::Tensor& frob,
                               double ridge_strength, int num_iter) {
#ifdef PRIME_WITH_CUDA
  return detail::launch_gka_solve_one(q, keys, h0, weights, from_start, frob, ridge_strength, num_iter);
#else
  (void)q, (void)keys, (void)h0, (void)weights, (void)from_start, (void)frob, (void)ridge_strength, (void)num_iter;
  throw user_error("gka_solve_one_group: this build has no CUDA kernels");
#endif
}

int gka_solve_one_group_blocks_per_multiprocessor() {
#ifdef PRIME_WITH_CUDA
  return detail::gka_solve_one_blocks_per_multiprocessor();
#else
  throw user_error("gka_solve_one_group: this build has no CUDA kernels");
#endif
}

}  // namespace prime::kernels
