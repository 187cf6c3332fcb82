// The chunk-start scan shared by the chunked forms whose state update is linear in the state
// (GKA's two states, Mamba-2's SSD): one autograd node instead of a chain of per-chunk ops.
//
// Unrolled, autograd takes every chunk's slice of the contributions apart with its own
// full-size zero gradient: n chunks cost n writes and reads of the whole [B,H,n,D1,D2] tensor
// in the backward pass (a gigabyte per chunk for a 32-head, 128-dim layer at 8k tokens). The
// backward here is the reverse scan, writing each chunk's gradient straight into one tensor.
//
// Forward (s_0 = initial):   s'_c = keep_c s_c,  starts_c = s'_c,  s_{c+1} = decay_c s'_c + X_c.
// Backward (a_n = dL/d final; a_{c+1} is dL/d X_c):
//   dL/d X_c      = a_{c+1}
//   a_c           = keep_c (decay_c a_{c+1} + dL/d starts_c),  dL/d initial = a_0
//   dL/d decay_c  = <a_{c+1}, starts_c>
// On CUDA (fp32, policy Auto) both walks are one kernel launch each (kernels/ssd_chunk's
// chunk_state_walk, one thread per state element) instead of one or two ops per chunk; keep,
// being 0 or 1, becomes the walk's restart flags.
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/ssd_chunk/ssd_chunk.h"
#include "model/ssm_chunks.h"
#include "util/error.h"

namespace prime::model::chunks {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// decay [B,H,n] at chunk c as a factor of a [B,H,D1,D2] state.
at::Tensor decay_at(const at::Tensor& decay, int64_t c) {
  return decay.select(2, c).unsqueeze(-1).unsqueeze(-1);
}

// The walk on the kernel: buffer [B,H,n,D1,D2] contiguous (updated in place), initial
// broadcastable to [B,H,D1,D2] or undefined; returns the final s as [B,H,D1,D2].
at::Tensor walk_on_kernel(const at::Tensor& buffer, const at::Tensor& decay, const at::Tensor& initial,
                          const at::Tensor& keep, bool reverse) {
  const int64_t B = buffer.size(0), H = buffer.size(1), n = buffer.size(2), D1 = buffer.size(3), D2 = buffer.size(4);
  const at::Tensor rows = buffer.view({B * H, n, D1 * D2});
  const at::Tensor start =
      initial.defined() ? initial.to(at::kFloat).expand({B, H, D1, D2}).contiguous().view({B * H, D1 * D2})
                        : at::Tensor();
  const at::Tensor restart = keep.defined() ? keep.eq(0).contiguous() : at::Tensor();
  at::Tensor final_state = at::empty({B * H, D1 * D2}, buffer.options());
  kernels::chunk_state_walk(rows, decay.contiguous().view({B * H, n}), start, restart, reverse, final_state);
  return final_state.view({B, H, D1, D2});
}

// Whether the walk runs on the kernel for this fresh contiguous [B,H,n,D1,D2] buffer.
bool walks_on_kernel(const at::Tensor& buffer, const at::Tensor& decay) {
  return decay.scalar_type() == at::kFloat && decay.device() == buffer.device() &&
         kernels::chunk_state_walk_apply(
             buffer.view({buffer.size(0) * buffer.size(1), buffer.size(2), buffer.size(3) * buffer.size(4)}));
}

// keep is [n], or empty when no chunk restarts (an undefined tensor cannot enter an autograd
// node).
struct ChunkStartScan : public torch::autograd::Function<ChunkStartScan> {
  static variable_list forward(AutogradContext* context, const at::Tensor& initial, const at::Tensor& contribution,
                               const at::Tensor& decay, const at::Tensor& keep_or_empty) {
    const at::Tensor keep = keep_or_empty.numel() > 0 ? keep_or_empty : at::Tensor();
    const int64_t n = contribution.size(2);
    at::Tensor starts = at::empty(contribution.sizes(), contribution.options());
    if (walks_on_kernel(starts, decay)) {
      starts.copy_(contribution);
      const at::Tensor state = walk_on_kernel(starts, decay, initial, keep, /*reverse=*/false);
      context->save_for_backward({initial, decay, keep_or_empty, starts});
      return {starts, state};
    }
    at::Tensor first = starts.select(2, 0);
    first.copy_(initial.expand(first.sizes()));
    if (keep.defined()) first.mul_(keep.select(0, 0));
    // Each chunk's update is written straight into the next chunk's start (one op per chunk, no
    // copy); the last one is the final state.
    at::Tensor state;
    for (int64_t c = 0; c < n; ++c) {
      const at::Tensor start = starts.select(2, c);
      if (c + 1 == n) {
        state = at::addcmul(contribution.select(2, c), decay_at(decay, c), start);
        break;
      }
      at::Tensor next = starts.select(2, c + 1);
      at::addcmul_out(next, contribution.select(2, c), decay_at(decay, c), start);
      if (keep.defined()) next.mul_(keep.select(0, c + 1));
    }
    context->save_for_backward({initial, decay, keep_or_empty, starts});
    return {starts, state};
  }

  static variable_list backward(AutogradContext* context, variable_list grads) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor &initial = saved[0], &decay = saved[1], &starts = saved[3];
    const at::Tensor keep = saved[2].numel() > 0 ? saved[2] : at::Tensor();
    const at::Tensor &g_starts = grads[0], &g_final = grads[1];
    at::NoGradGuard no_grad;
    // Slot c of g_contribution holds a_{c+1}; the scan runs in place from the last slot down.
    at::Tensor g_contribution = at::empty(starts.sizes(), starts.options());
    at::Tensor a;  // a_0
    if (walks_on_kernel(g_contribution, decay)) {
      if (g_starts.defined())
        g_contribution.copy_(g_starts);
      else
        g_contribution.zero_();
      a = walk_on_kernel(g_contribution, decay, g_final, keep, /*reverse=*/true);
    } else {
      a = reverse_walk(g_contribution, g_starts, g_final, decay, keep);
    }
    at::Tensor g_initial, g_decay;
    if (context->needs_input_grad(0)) g_initial = at::sum_to(a, initial.sizes());
    if (context->needs_input_grad(2)) g_decay = (g_contribution * starts).sum({-2, -1});
    return {g_initial, context->needs_input_grad(1) ? g_contribution : at::Tensor(), g_decay, at::Tensor()};
  }

  // The backward walk as torch ops, one or two per chunk: fills g_contribution, returns a_0.
  static at::Tensor reverse_walk(at::Tensor& g_contribution, const at::Tensor& g_starts, const at::Tensor& g_final,
                                 const at::Tensor& decay, const at::Tensor& keep) {
    const int64_t n = g_contribution.size(2);
    at::Tensor last = g_contribution.select(2, n - 1);
    if (g_final.defined())
      last.copy_(g_final);
    else
      last.zero_();
    at::Tensor a;  // a_c, once the loop reaches c = 0
    for (int64_t c = n - 1; c >= 0; --c) {
      const at::Tensor next = g_contribution.select(2, c);
      at::Tensor into = c > 0 ? g_contribution.select(2, c - 1) : at::empty_like(next);
      if (g_starts.defined())
        at::addcmul_out(into, g_starts.select(2, c), decay_at(decay, c), next);
      else
        at::mul_out(into, next, decay_at(decay, c));
      if (keep.defined()) into.mul_(keep.select(0, c));
      if (c == 0) a = into;
    }
    return a;
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> state_scan(const at::Tensor& initial, const at::Tensor& contribution,
                                             const at::Tensor& decay, const at::Tensor& keep) {
  PRIME_CHECK(contribution.dim() == 5 && contribution.size(2) > 0 && decay.dim() == 3 &&
                  decay.size(0) == contribution.size(0) && decay.size(1) == contribution.size(1) &&
                  decay.size(2) == contribution.size(2),
              "chunk state scan: contributions [B,H,n,D1,D2] with n > 0 and decays [B,H,n], got ",
              contribution.sizes(), " and ", decay.sizes());
  PRIME_CHECK(!keep.defined() || (keep.dim() == 1 && keep.size(0) == contribution.size(2)),
              "chunk state scan: keep must be [", contribution.size(2), "]");
  const at::Tensor start = initial.defined()
                               ? initial
                               : at::zeros({contribution.size(0), contribution.size(1), contribution.size(3),
                                            contribution.size(4)},
                                           contribution.options().requires_grad(false));
  const at::Tensor keep_or_empty = keep.defined() ? keep : at::empty({0}, decay.options().requires_grad(false));
  const variable_list out = ChunkStartScan::apply(start, contribution, decay, keep_or_empty);
  return {out[0], out[1]};
}

}  // namespace prime::model::chunks
