#include "eval/ssm_bench.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <tuple>
#include <utility>

#include "kernels/common/policy.h"
#include "kernels/gka_solve/gka_forward_bf16.h"
#include "kernels/gka_solve/gka_solve_one.h"
#include "model/gdn.h"
#include "model/gka_core.h"
#include "model/mamba2.h"
#include "util/cli.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::eval {
namespace {

struct CoreInputs {
  at::Tensor q, k, v, log_decay, beta, alpha;
  // GDN's q, scaled by 1/sqrt(D) once, a leaf of its own: the core takes q scaled, and GDN's mixer folds
  // the scale into q's normalization, so the core's time holds no scaling pass of its own.
  at::Tensor q_gdn;
};

// bf16 (the kernels bench only) makes q, k, v bf16 and keeps the gates fp32, as the bf16 forwards
// (GDN's fused forward, Mamba-2's SSD forward: x = v, B = k, C = q) take them.
CoreInputs make_inputs(const SsmBenchOptions& o, const at::Device& device) {
  const auto gate_type = o.dtype == at::kBFloat16 ? at::kFloat : o.dtype;
  auto options = at::TensorOptions().device(device).dtype(gate_type);
  const std::vector<int64_t> shape = {o.batch, o.tokens, o.heads, o.head_dim}, gates = {o.batch, o.tokens, o.heads};
  CoreInputs in;
  auto unit = [&](const std::vector<int64_t>& s) {
    at::Tensor x = at::randn(s, options);
    return (x / x.norm(2, {-1}, true)).to(o.dtype);
  };
  in.q = unit(shape);
  in.k = unit(shape);
  in.v = at::randn(shape, options).to(o.dtype);
  in.log_decay = -at::softplus(at::randn(gates, options)) * 0.1;
  in.beta = at::sigmoid(at::randn(gates, options));
  in.alpha = at::sigmoid(at::randn(gates, options));
  in.q_gdn = (in.q * (1.0 / std::sqrt(static_cast<double>(o.head_dim)))).to(o.dtype);
  for (at::Tensor* t : {&in.q, &in.k, &in.v, &in.q_gdn}) t->requires_grad_(true);
  return in;
}

// The same inputs with q, k, v in fp32 (the torch-ops form's side of a bf16 kernels bench).
CoreInputs as_fp32(const CoreInputs& in) {
  CoreInputs out = in;
  for (at::Tensor* t : {&out.q, &out.k, &out.v, &out.q_gdn}) *t = t->detach().to(at::kFloat).requires_grad_(true);
  return out;
}

// Runs the chunked core of `type` on the inputs and returns its output.
at::Tensor run_core(const std::string& type, const CoreInputs& in, const SsmBenchOptions& o) {
  if (type == "GDN") {
    return model::gated_delta_rule_chunked(in.q_gdn, in.k, in.v, in.log_decay, in.beta, at::Tensor(), 64).first;
  }
  if (type == "M2") {
    // x = v, B = k, C = q; delta in (0, 1), A = -1 per head.
    at::Tensor delta = at::sigmoid(in.log_decay * 10);
    at::Tensor A = -at::ones({o.heads}, in.log_decay.options().requires_grad(false));
    return model::ssd_chunked(in.v, delta, A, in.k, in.q, at::Tensor(), 256).first;
  }
  if (type == "GKA") {
    model::GkaMixer::Prepared prepared;
    prepared.q = in.q;
    // bf16 q, k, v stay bf16 (GKA's bf16 forward); fp32 gates would otherwise promote k and v.
    prepared.k = (in.k * in.beta.unsqueeze(-1)).to(in.q.scalar_type());
    prepared.v = (in.v * in.beta.unsqueeze(-1)).to(in.q.scalar_type());
    prepared.alpha = in.alpha;
    prepared.log_decay_kv = in.log_decay;
    prepared.log_decay_kk = in.log_decay;
    model::gka_detail::SolveOptions solve;
    solve.num_iter = o.gka_iterations;
    solve.output_scale = 1.0 / std::sqrt(static_cast<double>(o.head_dim));
    // The states stay fp32 with bf16 q, k, v (what the bf16 forward takes; bf16 states would send the
    // core to the torch form, which has no bf16 form).
    const auto state_type = in.q.scalar_type() == at::kBFloat16 ? at::kFloat : in.q.scalar_type();
    at::Tensor zero_state =
        at::zeros({o.batch, o.heads, o.head_dim, o.head_dim}, in.q.options().dtype(state_type).requires_grad(false));
    return model::gka_detail::chunked_core(prepared, zero_state, zero_state, 64, solve).o;
  }
  throw user_error("unknown SSM type '", type, "' (GDN, GKA, M2)");
}

std::string shape_label(const std::string& type, const SsmBenchOptions& options) {
  std::string shape = "(" + std::to_string(options.batch) + "," + std::to_string(options.tokens) + "," +
                      std::to_string(options.heads) + "," + std::to_string(options.head_dim) + ") " +
                      std::string(c10::toString(options.dtype));
  if (type == "GKA") shape += " N=" + std::to_string(options.gka_iterations);
  return shape;
}

// bf16: Mamba-2's and GDN's forms have a backward, GKA's is a forward only.
bool with_backward(const SsmBenchOptions& options, const std::string& type) {
  return options.backward && (options.dtype != at::kBFloat16 || type == "M2" || type == "GDN");
}

// One forward and backward of a core (grad: the output's gradient, drawn at the first call);
// the inputs' gradients are dropped after.
void forward_backward(const std::string& type, const CoreInputs& inputs, const SsmBenchOptions& options,
                      at::Tensor& grad) {
  at::Tensor out = run_core(type, inputs, options);
  if (!grad.defined()) grad = at::randn_like(out);
  out.backward(grad);
  for (const at::Tensor* t : {&inputs.q, &inputs.k, &inputs.v, &inputs.q_gdn})
    if (t->grad().defined()) const_cast<at::Tensor*>(t)->mutable_grad().reset();
}

// Median forward and (when asked) forward+backward time of one core on the inputs.
std::pair<double, double> time_core(const std::string& type, const CoreInputs& inputs,
                                    const SsmBenchOptions& options, const at::Device& device) {
  double forward_ms = 0, forward_backward_ms = 0;
  {
    at::NoGradGuard no_grad;
    forward_ms = median_ms([&] { run_core(type, inputs, options); }, device, options.warmup, options.repeats);
  }
  if (with_backward(options, type)) {
    at::Tensor grad;
    forward_backward_ms = median_ms([&] { forward_backward(type, inputs, options, grad); }, device,
                                    options.warmup, options.repeats);
  }
  return {forward_ms, forward_backward_ms};
}

// The cores compute in fp32 (what the mixers use) or float64 (gradient checks, GKA's default
// solve); the torch-ops forms have no half-precision form (no bf16 triangular solve). The kernels
// bench also takes bf16: GDN's and Mamba-2's bf16 forward and backward, GKA's bf16 forward.
void check_core_dtype(const SsmBenchOptions& options, bool kernels) {
  if (options.dtype == at::kFloat || options.dtype == at::kDouble) return;
  if (kernels && options.dtype == at::kBFloat16) {
    for (const std::string& type : options.types)
      if (type != "GDN" && type != "GKA" && type != "M2")
        throw user_error("--dtype bf16 times the bf16 forms of GDN, GKA and Mamba-2 only: pass --types GDN,GKA,M2");
    return;
  }
  throw user_error("--dtype ", dtype_flag_name(options.dtype), ": the SSM cores compute in fp32 or fp64",
                   kernels ? " (bf16: the bf16 forms, --types GDN,GKA,M2)" : " (the mixers cast bf16 inputs to fp32)");
}

}  // namespace

std::vector<SsmBenchRow> run_ssm_bench(const SsmBenchOptions& options, const at::Device& device) {
  check_core_dtype(options, /*kernels=*/false);
  std::vector<SsmBenchRow> rows;
  const CoreInputs inputs = make_inputs(options, device);
  // This table is the torch-ops forms' baseline, whatever PRIME_KERNELS says.
  const kernels::ScopedKernelPolicy torch_ops(kernels::Policy::Torch);
  for (const auto& type : options.types) {
    SsmBenchRow row;
    row.type = type;
    row.shape = shape_label(type, options);
    std::tie(row.forward_ms, row.forward_backward_ms) = time_core(type, inputs, options, device);
    rows.push_back(row);
  }
  return rows;
}

namespace {

void check_kernel_bench(const SsmBenchOptions& options, const at::Device& device) {
  check_core_dtype(options, /*kernels=*/true);
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("prime-bench kernels needs a CUDA device and a build with the CUDA kernels ",
                     "(PRIME_CUDA=ON)");
}

bool has_kernels(const std::string& type) { return type == "GDN" || type == "GKA" || type == "M2"; }

}  // namespace

std::vector<std::string> profile_kernel_cores(const SsmBenchOptions& options, const at::Device& device) {
  check_kernel_bench(options, device);
  const CoreInputs inputs = make_inputs(options, device);
  const kernels::ScopedKernelPolicy with_kernels(kernels::Policy::Auto);
  std::vector<std::string> shapes;
  for (const auto& type : options.types) {
    if (!has_kernels(type)) continue;
    at::Tensor grad;
    run_in_profiler_range(
        [&] {
          if (with_backward(options, type)) {
            forward_backward(type, inputs, options, grad);
          } else {
            at::NoGradGuard no_grad;
            run_core(type, inputs, options);
          }
        },
        device);
    shapes.push_back(type + " " + shape_label(type, options) + (with_backward(options, type) ? " fwd+bwd" : " fwd"));
  }
  return shapes;
}

std::vector<KernelBenchRow> run_kernel_bench(const SsmBenchOptions& options, const at::Device& device) {
  check_kernel_bench(options, device);
  std::vector<KernelBenchRow> rows;
  const CoreInputs inputs = make_inputs(options, device);
  // bf16: the torch-ops form runs on fp32 copies (it has no bf16 form: what a bf16 model's mixer runs).
  const CoreInputs torch_inputs = options.dtype == at::kBFloat16 ? as_fp32(inputs) : inputs;
  for (const auto& type : options.types) {
    if (!has_kernels(type)) continue;
    KernelBenchRow row;
    row.type = type;
    row.shape = shape_label(type, options);
    {
      const kernels::ScopedKernelPolicy with_kernels(kernels::Policy::Auto);
      std::tie(row.kernel_forward_ms, row.kernel_forward_backward_ms) = time_core(type, inputs, options, device);
    }
    {
      const kernels::ScopedKernelPolicy torch_ops(kernels::Policy::Torch);
      std::tie(row.torch_forward_ms, row.torch_forward_backward_ms) = time_core(type, torch_inputs, options, device);
    }
    // M2 too: its state path (local end states and C start^T, P = N = head_dim) is 4 P N per token.
    const double flops = 4.0 * options.head_dim * options.head_dim * options.batch * options.tokens * options.heads;
    row.kernel_forward_tflops = flops / (row.kernel_forward_ms * 1e-3) / 1e12;
    rows.push_back(row);
  }
  return rows;
}

SolveTiming time_gka_solve_one_group(const SsmBenchOptions& options, const at::Device& device) {
  SolveTiming timing;
  if (options.head_dim != 128 || options.gka_iterations < 1 || !kernels::gka_forward_wgmma_available(device))
    return timing;
  const int64_t M = options.batch * options.heads * ((options.tokens + 63) / 64);
  timing.chunks = M;
  timing.blocks_per_multiprocessor = kernels::gka_solve_one_group_blocks_per_multiprocessor();
  const auto bf16 = at::TensorOptions().device(device).dtype(at::kBFloat16);
  const auto f32 = at::TensorOptions().device(device).dtype(at::kFloat);
  auto unit = [&](std::vector<int64_t> sizes) {
    const at::Tensor x = at::randn(sizes, f32);
    return (x / x.norm(2, {-1}, true)).to(at::kBFloat16);
  };
  const at::Tensor q = unit({M, 64, 128}), keys = unit({M, 64, 128});
  // H_0 a sum of 64 outer products (symmetric, positive semi-definite); the decays of the bench's log decays.
  const at::Tensor history = unit({M, 64, 128}).to(at::kFloat);
  const at::Tensor h0 = at::matmul(history.transpose(1, 2), history).to(bf16.dtype());
  const at::Tensor G = at::cumsum(-at::softplus(at::randn({M, 64}, f32)) * 0.1, -1);
  const at::Tensor lower = at::ones({64, 64}, f32).tril();
  const at::Tensor weights = at::exp((G.unsqueeze(-1) - G.unsqueeze(-2)) * lower) * lower;
  const at::Tensor from_start = at::exp(G).contiguous();
  const at::Tensor frob = (h0.to(at::kFloat).norm(2, {1, 2}).unsqueeze(-1) * from_start + 1.0).contiguous();
  timing.ms = median_ms(
      [&] {
        kernels::gka_solve_one_group(q, keys, h0, weights, from_start, frob, 0.02, options.gka_iterations);
      },
      device, options.warmup, options.repeats);
  return timing;
}

}  // namespace prime::eval
