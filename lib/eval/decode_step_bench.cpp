#include "eval/decode_step_bench.h"

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <functional>
#include <string>

#include "eval/kernel_vs_torch.h"
#include "kernels/attention_decode/attention_decode.h"
#include "kernels/common/policy.h"
#include "kernels/ssm_decode/ssm_decode.h"
#include "model/gdn.h"
#include "model/gka_core.h"
#include "model/kv_cache.h"
#include "model/mamba2.h"
#include "util/device_timing.h"
#include "util/error.h"

namespace prime::eval {

namespace {

DecodeStepBenchRow measure(const std::string& type, const std::string& shape, double floor_bytes,
                           const std::function<void()>& step, const DecodeStepBenchOptions& options,
                           const at::Device& device) {
  const KernelVsTorch times =
      time_kernel_vs_torch(step, floor_bytes, options.steps_per_repeat, options.warmup, options.repeats, device);
  DecodeStepBenchRow row;
  row.type = type;
  row.shape = shape;
  row.floor_bytes = floor_bytes;
  row.kernel_ms = times.kernel_ms;
  row.torch_ms = times.torch_ms;
  row.kernel_tbps = times.kernel_tbps;
  row.torch_tbps = times.torch_tbps;
  row.kernel_fraction_of_hbm = row.kernel_tbps / options.hbm_tbps;
  return row;
}

// The rate of a device-to-device copy of `elements` fp32 values, bytes read and written / time.
double copy_tbps(int64_t elements, const DecodeStepBenchOptions& options, const at::Device& device) {
  const auto fp32 = at::TensorOptions().device(device).dtype(at::kFloat);
  const at::Tensor source = at::randn({elements}, fp32);
  at::Tensor target = at::empty_like(source);
  const double ms = median_ms_per_call([&] { target.copy_(source); }, options.steps_per_repeat, device,
                                       options.warmup, options.repeats);
  return 8.0 * static_cast<double>(elements) / (ms * 1e-3) / 1e12;
}

// Sets the row's copy reference for a state of `elements` values.
void set_copy_reference(DecodeStepBenchRow& row, int64_t elements, const DecodeStepBenchOptions& options,
                        const at::Device& device) {
  row.copy_tbps = copy_tbps(elements, options, device);
  row.kernel_fraction_of_copy = row.kernel_tbps / row.copy_tbps;
}

std::string shape_text(int64_t B, int64_t H, int64_t rows, int64_t columns) {
  return "B=" + std::to_string(B) + " H=" + std::to_string(H) + " " + std::to_string(rows) + "x" +
         std::to_string(columns);
}

// GKA's step at batch B, solving in `solve` with num_iter iterations (0: S alone), as GkaMixer::step runs it
// (model::gka_detail::step_in_place).
DecodeStepBenchRow gka_row(int64_t B, at::ScalarType solve, int num_iter, const DecodeStepBenchOptions& options,
                           const at::Device& device) {
  const int64_t H = options.gka_heads, D = options.gka_head_dim;
  const auto fp32 = at::TensorOptions().device(device).dtype(at::kFloat);
  const auto typed = fp32.dtype(solve);
  const auto unit_rows = [&](const at::Tensor& t) { return t / t.norm(2, -1, true); };
  const at::Tensor q = unit_rows(at::randn({B, H, D}, typed)), k = unit_rows(at::randn({B, H, D}, typed));
  const at::Tensor v = at::randn({B, H, D}, typed), alpha = at::rand({B, H}, typed);
  const at::Tensor decay_kk = -at::rand({B, H}, typed) * 0.1, decay_kv = -at::rand({B, H}, typed) * 0.1;
  // States as a cache holds them some tokens in: H a sum of decayed k k^T (PSD), S random.
  const at::Tensor keys = unit_rows(at::randn({B, H, 8, D}, fp32));
  at::Tensor kk = num_iter > 0 ? at::matmul(keys.transpose(-1, -2), keys).contiguous() : at::Tensor();
  at::Tensor kv = at::randn({B, H, D, D}, fp32) * 0.1;
  const kernels::GkaDecodeOptions kernel_options{options.gka_ridge, num_iter, 1.0 / std::sqrt(static_cast<double>(D))};
  PRIME_CHECK(kernels::gka_decode_apply(q, k, v, alpha, decay_kk, decay_kv, kk, kv, kernel_options),
              "decode step benchmark: the GKA kernel does not serve ", kv.sizes());
  model::GkaMixer::Prepared prepared;
  prepared.q = q.unsqueeze(1), prepared.k = k.unsqueeze(1), prepared.v = v.unsqueeze(1);
  prepared.alpha = alpha.unsqueeze(1);
  prepared.log_decay_kk = decay_kk.unsqueeze(1), prepared.log_decay_kv = decay_kv.unsqueeze(1);
  model::gka_detail::SolveOptions solve_options;
  solve_options.ridge_strength = kernel_options.ridge_strength;
  solve_options.num_iter = num_iter;
  solve_options.output_scale = kernel_options.output_scale;
  const auto step = [&] { model::gka_detail::step_in_place(prepared, kk, kv, solve_options); };
  // Floor: each state read and written (fp32); q, k, v, alpha and the two decays read in the solve dtype (without
  // the solve neither alpha nor H's decay), o written (fp32).
  const double states = num_iter > 0 ? 2.0 : 1.0, gates = num_iter > 0 ? 3.0 : 1.0;
  const double element = static_cast<double>(at::elementSize(solve));
  const double vectors = static_cast<double>(B * H) * (element * (3.0 * static_cast<double>(D) + gates) + 4.0 * D);
  const double bytes = states * 8.0 * static_cast<double>(B * H * D * D) + vectors;
  const std::string how =
      num_iter == 0 ? "N=0" : "N=" + std::to_string(num_iter) + (solve == at::kDouble ? " f64" : " f32");
  DecodeStepBenchRow row = measure("GKA", shape_text(B, H, D, D) + " " + how, bytes, step, options, device);
  set_copy_reference(row, static_cast<int64_t>(states) * B * H * D * D, options, device);
  return row;
}

}  // namespace

std::vector<DecodeStepBenchRow> run_decode_step_bench(const DecodeStepBenchOptions& options,
                                                      const at::Device& device) {
  if (!kernels::built_with_cuda_kernels() || !device.is_cuda())
    throw user_error("the decode step benchmark needs a CUDA device and a build with the CUDA ",
                     "kernels (PRIME_CUDA=ON)");
  at::NoGradGuard no_grad;
  const auto fp32 = at::TensorOptions().device(device).dtype(at::kFloat);
  std::vector<DecodeStepBenchRow> rows;
  for (const int64_t B : options.batches) {
    const int64_t H = options.gdn_heads, Dk = options.gdn_key_dim, Dv = options.gdn_value_dim;
    at::Tensor k = at::randn({B, H, Dk}, fp32);
    k = k / k.norm(2, -1, true);
    const at::Tensor q = at::randn({B, H, Dk}, fp32) * 0.1, v = at::randn({B, H, Dv}, fp32);
    const at::Tensor g = -at::rand({B, H}, fp32) * 0.1, beta = at::rand({B, H}, fp32);
    at::Tensor state = at::randn({B, H, Dk, Dv}, fp32) * 0.1;
    PRIME_CHECK(kernels::gdn_decode_apply(q, k, v, g, beta, state),
                "decode step benchmark: the GDN kernel does not serve ", state.sizes());
    // Floor: the state read and written; q, k, v, g, beta read and o written.
    const double gdn_bytes = 4.0 * B * H * (2 * Dk * Dv + 2 * Dk + 2 * Dv + 2);
    rows.push_back(measure("GDN", shape_text(B, H, Dk, Dv), gdn_bytes,
                           [&] { model::gated_delta_rule_step_in_place(q, k, v, g, beta, state); },
                           options, device));
    set_copy_reference(rows.back(), state.numel(), options, device);
  }
  for (const int64_t B : options.batches) {
    const int64_t H = options.mamba2_heads, P = options.mamba2_head_dim, N = options.mamba2_state_dim;
    const at::Tensor x = at::randn({B, H, P}, fp32), delta = at::rand({B, H}, fp32) * 0.1;
    const at::Tensor A = -at::rand({H}, fp32) - 0.1;
    const at::Tensor Bm = at::randn({B, H, N}, fp32) * 0.1, Cm = at::randn({B, H, N}, fp32) * 0.1;
    at::Tensor state = at::randn({B, H, P, N}, fp32) * 0.1;
    PRIME_CHECK(kernels::mamba2_decode_apply(x, delta, A, Bm, Cm, state),
                "decode step benchmark: the Mamba-2 kernel does not serve ", state.sizes());
    // Floor: the state read and written; x, delta, Bm, Cm read and y written (A is negligible).
    const double m2_bytes = 4.0 * B * H * (2 * P * N + 2 * P + 2 * N + 1);
    rows.push_back(measure("M2", shape_text(B, H, P, N), m2_bytes,
                           [&] { model::ssd_step_in_place(x, delta, A, Bm, Cm, state); }, options, device));
    set_copy_reference(rows.back(), state.numel(), options, device);
  }
  for (const int64_t B : options.batches) {
    rows.push_back(gka_row(B, at::kDouble, options.gka_num_iter, options, device));
    rows.push_back(gka_row(B, at::kFloat, options.gka_num_iter, options, device));
    rows.push_back(gka_row(B, at::kFloat, 0, options, device));
  }
  const auto bf16 = fp32.dtype(at::kBFloat16);
  for (const auto& [B, S] : options.attention_points) {
    const int64_t Hq = options.attention_heads, Hkv = options.attention_kv_heads, D = options.attention_head_dim;
    const at::Tensor q = at::randn({B, Hq, 1, D}, bf16);
    model::KvCache::StepView view{at::randn({B, Hkv, S, D}, bf16), at::randn({B, Hkv, S, D}, bf16),
                                  at::ones({S}, fp32.dtype(at::kBool))};
    PRIME_CHECK(kernels::attention_decode_apply(q, view.keys, view.values, view.visible),
                "decode step benchmark: the attention kernel does not serve ", view.keys.sizes());
    // Floor: every key and value read once (bf16), the query read and the output written.
    const double attention_bytes = 2.0 * (2.0 * B * Hkv * S * D + 2.0 * B * Hq * D);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    rows.push_back(measure("ATTN",
                           "B=" + std::to_string(B) + " S=" + std::to_string(S) + " " + std::to_string(Hq) + "/" +
                               std::to_string(Hkv) + "x" + std::to_string(D),
                           attention_bytes, [&] { model::attend_one_token(q, view, scale); }, options, device));
  }
  return rows;
}

}  // namespace prime::eval
