// The Chebyshev solve of GKA's chunked form as one autograd node.
//
// Unrolled by autograd, the 30 iterations keep every iterate and every intermediate of
// H_t x (several [B,H,n,C,D] tensors per iteration and layer, alive until the backward pass):
// the bulk of a GKA layer's training memory. This node saves only its inputs, which other nodes
// of the chunked form keep anyway, and in backward recomputes the iterates and runs the exact
// reverse of the iteration: the same gradient as the unrolled graph, to rounding.
//
// Iteration (y_0 = 0, y_1 = eta q; i = 1..N, output y_{N+1}):
//   y_{i+1} = omega_i eta q + (1 - omega_i) y_{i-1} + omega_i kappa y_i - omega_i eta H y_i
// with kappa = 1 - eta lambda (= 1/(1 + 2r): its derivative in ||H||_F is exactly 0) and
// eta = 2 / ((2r + 1) f), so d eta / d f = -eta / f. H_t is symmetric, so with A_{i+1} the
// adjoint of y_{i+1} and U_i = -omega_i eta A_{i+1}:
//   adjoint of y_i     += omega_i kappa A_{i+1} + H U_i
//   adjoint of y_{i-1} += (1 - omega_i) A_{i+1}
//   d/d eta            += omega_i A_{i+1} . q + (H U_i) . y_i / eta
// and every U_i y_i^T is an upstream gradient of H_t, taken apart into K, H_0, W and e^{G_t}
// exactly as autograd would take apart apply_H below. On CUDA, where the kernels serve the solve,
// kernels/gka_solve runs the iterates and the reverse sweep (PRIME_GKA_BACKWARD_KERNEL=0 keeps
// the torch-ops sweep below, which is the reference and the CPU path).
//
// Only U_i K^T, U_i H_0 and (W o U_i K^T) K feed the next step of the sweep; the products that
// take U_i y_i^T apart into dK, dH_0 and dW are sums over i. PRIME_GKA_SWEEP=split runs the sweep
// for the adjoints alone (on CUDA kernels/gka_solve's adjoint recurrence) and forms those sums
// afterwards as products of the stacked U_i and y_i, contraction N C (stacked_gradients;
// experiments/gka_sweep_split: the same gradient, summed in another order).
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/chunk_gemm/chunk_gemm.h"
#include "kernels/common/policy.h"
#include "kernels/common/switches.h"
#include "kernels/gka_solve/gka_solve.h"
#include "model/gka_core.h"
#include "model/ssm_common.h"
#include "util/error.h"

namespace prime::model::gka_detail {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// H_t X for all positions of every chunk: X [..,C,D] -> [..,C,D] (H_0 symmetric, so
// x H_0 = (H_0 x)^T).
at::Tensor apply_chunk_H(const at::Tensor& X, const ChunkSystem& system) {
  return at::addcmul(at::matmul(system.weights * at::matmul(X, system.keys.transpose(-1, -2)),
                                system.keys),
                     system.from_start, at::matmul(X, system.start));
}

// Adds `term` into `sum` (undefined meaning zero).
void accumulate(at::Tensor& sum, const at::Tensor& term) {
  sum = sum.defined() ? sum.add_(term) : term;
}

// Where the sweep forms the gradients of K, H_0 and W: inside its loop, or after it from the
// stacked adjoints (PRIME_GKA_SWEEP, read at each backward).
bool split_sweep() {
  return kernels::environment_switch<bool>(
      "PRIME_GKA_SWEEP",
      {{"in-loop", false, "the gradients of the keys, H_0 and the weights summed inside the reverse sweep"},
       {"split", true, "formed after it from the stacked adjoints"}});
}

// The gradients of the keys, H_0 and the weights from the stacked iterates and adjoints, ys and us
// [..., N, C, D] (q's leading dims; us[i] = U_{i+1} = -omega eta A_{i+2}):
//   dH_0 = [y_i]^T [e o U_i],  dK = [W o y_i K^T]^T [U_i] + [W o U_i K^T]^T [y_i],
//   dW = sum_i (U_i K^T) o (y_i K^T),
// each stacked over (i, t), as the in-loop sweep sums them one iteration at a time. The products run
// on kernels/chunk_gemm (3xTF32 on CUDA, reading the fp32 operands in place, transposed views too;
// at::baddbmm elsewhere): one TF32 or bf16 pass would put dK 6-240x past the fp32 bound
// (experiments/gka_sweep_split).
struct StackedGradients {
  at::Tensor keys, start, weights;
};

StackedGradients stacked_gradients(const ChunkSystem& system, const at::Tensor& ys, const at::Tensor& us,
                                   bool need_keys, bool need_start, bool need_weights) {
  const int64_t N = ys.size(-3), C = ys.size(-2), D = ys.size(-1);
  const at::IntArrayRef lead = ys.sizes().slice(0, ys.dim() - 3);
  const auto flat = [&](const at::Tensor& t, int64_t rows, int64_t cols) {
    std::vector<int64_t> sizes(lead.begin(), lead.end());
    sizes.insert(sizes.end(), {rows, cols});
    return t.expand(sizes).reshape({-1, rows, cols});
  };
  const auto with_lead = [&](const at::Tensor& t) {
    std::vector<int64_t> sizes(lead.begin(), lead.end());
    sizes.insert(sizes.end(), {t.size(-2), t.size(-1)});
    return t.view(sizes);
  };
  const at::Tensor Y = ys.reshape({-1, N * C, D}), U = us.reshape({-1, N * C, D});
  const int64_t L = Y.size(0);
  StackedGradients out;
  if (need_start) {
    const at::Tensor e = flat(system.from_start, C, 1).unsqueeze(1);  // [L, 1, C, 1]
    out.start = with_lead(kernels::chunk_matmul(Y.transpose(1, 2), (U.view({L, N, C, D}) * e).view({L, N * C, D})));
  }
  if (need_keys || need_weights) {
    const at::Tensor Kt = flat(system.keys, C, D).transpose(1, 2);
    const at::Tensor YK = kernels::chunk_matmul(Y, Kt).view({L, N, C, C});
    const at::Tensor UK = kernels::chunk_matmul(U, Kt).view({L, N, C, C});
    if (need_weights) out.weights = with_lead((UK * YK).sum(1));
    if (need_keys) {
      const at::Tensor W = flat(system.weights, C, C).unsqueeze(1);  // [L, 1, C, C]
      at::Tensor keys = kernels::chunk_matmul((W * YK).view({L, N * C, C}).transpose(1, 2), U);
      kernels::chunk_gemm(keys, (W * UK).view({L, N * C, C}).transpose(1, 2), Y, 1.0, 1.0);
      out.keys = with_lead(keys);
    }
  }
  return out;
}

struct ChunkSolve : public torch::autograd::Function<ChunkSolve> {
  // Inputs in ChunkSystem order: q, keys, start, weights, from_start, frob.
  static at::Tensor forward(AutogradContext* context, const at::Tensor& q, const at::Tensor& keys,
                            const at::Tensor& start, const at::Tensor& weights,
                            const at::Tensor& from_start, const at::Tensor& frob,
                            double ridge_strength, int64_t num_iter) {
    context->save_for_backward({q, keys, start, weights, from_start, frob});
    context->saved_data["ridge_strength"] = ridge_strength;
    context->saved_data["num_iter"] = num_iter;
    // On CUDA the fused kernel (kernels/gka_solve) runs the same iteration on chip; under
    // PRIME_SSM_CORE=bf16 on bf16x3 products (16-bit significands, ~1e-5 of float64 after 30 iterations,
    // within the fp32 bound at twice 3xTF32's rate: the keys here
    // are the fp32 ones the attention uses too, and the bf16 form's accuracy holds only for bf16
    // keys used throughout: experiments/gka_bf16_forward). PRIME_GKA_SOLVE_PRODUCTS=bf16x3 takes them for
    // the fp32 solve's forward too. The backward recomputes the iterates on 3xTF32 whatever the forward
    // took and runs the fp32 sweep: the norm's gradient is a difference of two terms ~1/r times itself,
    // and bf16x3 iterates put it at the fp32 bound (experiments/gka_sweep_split); one bf16 MMA per product
    // in the sweep would put the keys' gradient past the bf16 bound (experiments/gka_bf16_solve), bf16x3
    // keeps it within 1.4e-5 (PRIME_GKA_BACKWARD_PRODUCTS=bf16x3, the sweep kernel's products alone).
    const kernels::SolveProducts fp32_products = kernels::gka_fp32_solve_products();  // a bad value fails here
    if (kernels::gka_chunk_solve_apply(q))
      return kernels::gka_chunk_solve(q, keys, start, weights, from_start, frob, ridge_strength,
                                      static_cast<int>(num_iter), nullptr,
                                      kernels::bf16_ssm_core() ? kernels::SolveProducts::Bf16x3 : fp32_products);
    const ChunkSystem system{keys, start, weights, from_start};
    return chebyshev_iterate([&](const at::Tensor& X) { return apply_chunk_H(X, system); }, q,
                             frob, ridge_strength, static_cast<int>(num_iter));
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor &q = saved[0], &frob = saved[5];
    const ChunkSystem system{saved[1], saved[2], saved[3], saved[4]};
    const double r = context->saved_data["ridge_strength"].toDouble();
    const int num_iter = static_cast<int>(context->saved_data["num_iter"].toInt());
    const bool need_keys = context->needs_input_grad(1), need_start = context->needs_input_grad(2),
               need_weights = context->needs_input_grad(3),
               need_from_start = context->needs_input_grad(4), need_frob = context->needs_input_grad(5);
    at::NoGradGuard no_grad;
    const OutsideAutocast outside_autocast;  // as the forward: the iterates stay in q's dtype
    const bool split = split_sweep();
    const kernels::SolveProducts sweep_products = kernels::gka_backward_products();  // a bad value fails here

    // Recompute the iterates y_1..y_N (on CUDA the kernel's 3xTF32 products: see forward).
    std::vector<at::Tensor> ys;
    if (kernels::gka_chunk_solve_apply(q)) {
      // Split: the adjoint recurrence on chip, then the stacked products, both reading the iterates
      // chunk-major (where its kernel does not serve, the in-loop sweep kernel below, not the torch loop).
      const bool split_on_chip =
          split && kernels::gka_chunk_solve_backward_enabled() && kernels::gka_chunk_adjoint_apply(q, num_iter);
      at::Tensor iterates;
      kernels::gka_chunk_solve(q, system.keys, system.start, system.weights, system.from_start, frob,
                               r, num_iter, &iterates, kernels::SolveProducts::Tf32x3,
                               split_on_chip ? kernels::IterateLayout::ChunkMajor
                                             : kernels::IterateLayout::IterationMajor);
      if (split_on_chip) {
        const kernels::GkaAdjoints a = kernels::gka_chunk_adjoint_recurrence(
            q, system.keys, system.start, system.weights, system.from_start, frob, r, num_iter, iterates,
            grad_outputs[0]);
        StackedGradients g;
        if (need_keys || need_start || need_weights)
          g = stacked_gradients(system, iterates, a.adjoints, need_keys, need_start, need_weights);
        return gradients_of_inputs(saved, {a.q, g.keys, g.start, g.weights,
                                           need_from_start ? a.from_start : at::Tensor(),
                                           need_frob ? a.frob : at::Tensor()});
      }
      // The whole reverse sweep on chip (kernels/gka_solve), every gradient per chunk, unless
      // PRIME_GKA_BACKWARD_KERNEL=0 asks for the torch-ops sweep below.
      if (kernels::gka_chunk_solve_backward_enabled() && kernels::gka_chunk_solve_backward_apply(q, num_iter)) {
        const kernels::GkaSolveGradients g =
            kernels::gka_chunk_solve_backward(q, system.keys, system.start, system.weights, system.from_start,
                                              frob, r, num_iter, iterates, grad_outputs[0], sweep_products);
        return gradients_of_inputs(saved, {g.q, need_keys ? g.keys : at::Tensor(),
                                           need_start ? g.start : at::Tensor(),
                                           need_weights ? g.weights : at::Tensor(),
                                           need_from_start ? g.from_start : at::Tensor(),
                                           need_frob ? g.frob : at::Tensor()});
      }
      ys = iterates.unbind(0);
    } else {
      chebyshev_iterate([&](const at::Tensor& X) { return apply_chunk_H(X, system); }, q, frob, r,
                        num_iter, &ys);
    }
    const at::Tensor eta = 2.0 / (2.0 * (frob * r) + frob);  // as chebyshev_iterate
    const at::Tensor kappa = 1.0 - eta * (frob * r);
    const double spread = 1.0 / (2.0 * (2.0 * r + 1.0));
    std::vector<double> omegas;
    for (double omega = 2.0; omegas.size() < ys.size();) {
      omega = 1.0 / (1.0 - spread * spread * omega);
      omegas.push_back(omega);
    }

    // Reverse sweep. adjoint_next: complete adjoint of y_{i+1}; adjoint_cur / adjoint_prev:
    // what is known so far of the adjoints of y_i / y_{i-1}.
    const at::Tensor keys_t = system.keys.transpose(-1, -2);
    at::Tensor adjoint_next = grad_outputs[0], adjoint_cur, adjoint_prev;
    at::Tensor q_coeff;  // sum of omega_i A_{i+1}, plus A_1: d/dq = eta * q_coeff
    at::Tensor hy;       // sum of (H U_i) . y_i
    at::Tensor g_keys, g_start, g_weights, g_from_start;
    std::vector<at::Tensor> us;  // split: U_N .. U_1
    for (int i = num_iter; i >= 1; --i) {
      const double omega = omegas[static_cast<size_t>(i - 1)];
      const at::Tensor& y = ys[static_cast<size_t>(i - 1)];
      const at::Tensor U = adjoint_next * (eta * -omega);
      const at::Tensor UK = at::matmul(U, keys_t);  // [..,C,C]
      const at::Tensor WUK = system.weights * UK;
      const at::Tensor UH0 = at::matmul(U, system.start);
      const at::Tensor HU = at::addcmul(at::matmul(WUK, system.keys), system.from_start, UH0);
      if (split) {
        us.push_back(U);
      } else if (need_weights || need_keys) {
        const at::Tensor YK = at::matmul(y, keys_t);
        if (need_weights) accumulate(g_weights, UK * YK);
        if (need_keys) {
          accumulate(g_keys, at::matmul((system.weights * YK).transpose(-1, -2), U));
          g_keys.add_(at::matmul(WUK.transpose(-1, -2), y));
        }
      }
      if (need_from_start) accumulate(g_from_start, (UH0 * y).sum(-1, /*keepdim=*/true));
      if (need_start && !split) accumulate(g_start, at::matmul(y.transpose(-1, -2), U * system.from_start));
      if (need_frob) accumulate(hy, (HU * y).sum(-1, /*keepdim=*/true));
      accumulate(q_coeff, adjoint_next * omega);
      // Adjoints flowing to y_i (iteration i) and y_{i-1} (momentum term of iteration i).
      at::Tensor to_cur = at::addcmul(HU, kappa * omega, adjoint_next);
      adjoint_cur = adjoint_cur.defined() ? adjoint_cur.add_(to_cur) : to_cur;
      if (i >= 2) accumulate(adjoint_prev, adjoint_next * (1.0 - omega));
      adjoint_next = adjoint_cur;
      adjoint_cur = adjoint_prev;
      adjoint_prev = at::Tensor();
      // y_i has no later use in the loop's own sums: free it as the sweep goes (the kernel's
      // iterates share one buffer, freed with the last of them).
      if (!split) ys[static_cast<size_t>(i - 1)].reset();
    }
    accumulate(q_coeff, adjoint_next);  // y_1 = eta q
    if (split) {
      std::reverse(us.begin(), us.end());
      const StackedGradients g = stacked_gradients(system, at::stack(ys, -3), at::stack(us, -3), need_keys,
                                                   need_start, need_weights);
      g_keys = g.keys;
      g_start = g.start;
      g_weights = g.weights;
    }

    at::Tensor g_frob;
    if (need_frob) {
      // d eta / d f = -eta / f, eta and f per position.
      const at::Tensor d_eta = (q_coeff * q).sum(-1, /*keepdim=*/true) + hy / eta;
      g_frob = d_eta * (-eta / frob);
    }
    return gradients_of_inputs(saved, {eta * q_coeff, g_keys, g_start, g_weights, g_from_start, g_frob});
  }

  // The backward's result from the six gradients with q's leading dims (undefined: not needed):
  // an input broadcast in the forward takes its gradient summed back to its own shape.
  static variable_list gradients_of_inputs(const variable_list& saved, std::vector<at::Tensor> six) {
    variable_list grads(8);
    for (size_t index = 0; index < six.size(); ++index) {
      at::Tensor& grad = six[index];
      if (grad.defined() && grad.sizes() != saved[index].sizes()) grad = at::sum_to(grad, saved[index].sizes());
      grads[index] = grad;
    }
    return grads;
  }
};

}  // namespace

at::Tensor chunk_solve(const at::Tensor& q, const ChunkSystem& system, const at::Tensor& frob,
                       double ridge_strength, int num_iter) {
  PRIME_CHECK(num_iter > 0, "GKA chunk solve needs at least one iteration");
  return ChunkSolve::apply(q, system.keys, system.start, system.weights, system.from_start, frob,
                           ridge_strength, static_cast<int64_t>(num_iter));
}

at::Tensor chunk_solve_unrolled(const at::Tensor& q, const ChunkSystem& system,
                                const at::Tensor& frob, double ridge_strength, int num_iter) {
  return chebyshev_iterate([&](const at::Tensor& X) { return apply_chunk_H(X, system); }, q, frob,
                           ridge_strength, num_iter);
}

}  // namespace prime::model::gka_detail
