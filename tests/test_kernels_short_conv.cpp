// kernels/short_conv: the fused causal short conv + SiLU against a float64 reference (conv1d +
// silu on double, on the CPU): output and every gradient, with and without bias and history;
// prefill then decode steps against the full sequence, the decode step writing the cache's own
// state tensor. Outputs are poisoned with NaN first, so an unwritten element fails.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "kernels/common/policy.h"
#include "kernels/short_conv/short_conv.h"
#include "model/ssm_common.h"
#include "test_helpers.h"
#include "test_kernels_util.h"

using namespace prime;

namespace {

// silu(conv1d([history, u])) in float64 on the CPU; history zeros when undefined.
at::Tensor reference_conv_silu(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& history) {
  const int64_t B = u.size(0), C = u.size(2), K = weight.size(2);
  const at::Tensor before = history.defined() ? history : at::zeros({B, C, K - 1}, u.options());
  const at::Tensor input = at::cat({before, u.transpose(1, 2)}, 2);
  std::optional<at::Tensor> b;
  if (bias.defined()) b = bias;
  return at::silu(at::conv1d(input, weight, b, at::IntArrayRef{1}, at::IntArrayRef{0},
                             at::IntArrayRef{1}, C))
      .transpose(1, 2);
}

// Values exactly representable in `type`, as float64 CPU tensors.
at::Tensor representable(at::IntArrayRef sizes, at::ScalarType type, double scale = 1.0) {
  return (at::randn(sizes, at::kDouble) * scale).to(type).to(at::kDouble);
}

std::vector<at::Tensor> leaves_on(const std::vector<at::Tensor>& values, const at::Device& device,
                                  const std::vector<at::ScalarType>& types) {
  std::vector<at::Tensor> leaves;
  for (size_t i = 0; i < values.size(); ++i)
    leaves.push_back(values[i].defined()
                         ? values[i].to(device, types[i]).detach().requires_grad_(true)
                         : at::Tensor());
  return leaves;
}

std::vector<at::Tensor> defined_only(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : tensors)
    if (t.defined()) out.push_back(t);
  return out;
}

}  // namespace

TEST_CASE("short conv kernel: never applies to CPU tensors, where causal_conv_silu is silu(causal_conv)",
          "[kernels][short_conv]") {
  const at::Tensor u = at::randn({2, 5, 6}), weight = at::randn({6, 1, 4}), bias = at::randn({6});
  at::Tensor state = at::randn({2, 6, 3});
  CHECK_FALSE(kernels::short_conv_apply(u, weight, at::Tensor()));
  CHECK_FALSE(kernels::short_conv_apply(u, weight, state));
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    CHECK_FALSE(kernels::short_conv_apply(u, weight, state));
  }
  at::Tensor state_copy = state.clone();
  const at::Tensor fused = model::causal_conv_silu(u, weight, bias, &state);
  const at::Tensor plain = at::silu(model::causal_conv(u, weight, bias, &state_copy));
  CHECK(at::equal(fused, plain));
  CHECK(at::equal(state, state_copy));
}

TEST_CASE("short conv kernel: output and gradients of u, weight, bias and history equal float64",
          "[kernels][short_conv][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const int64_t B = 2, C = 203;  // C not a multiple of the 128-channel block
  {
    const kernels::ScopedKernelPolicy torch_only(kernels::Policy::Torch);
    CHECK_FALSE(kernels::short_conv_apply(at::zeros({B, 4, C}, cuda), at::zeros({C, 1, 4}, cuda),
                                          at::Tensor()));
  }
  CHECK_FALSE(kernels::short_conv_apply(at::zeros({B, 4, C}, at::TensorOptions(cuda).dtype(at::kDouble)),
                                        at::zeros({C, 1, 4}, cuda), at::Tensor()));
  CHECK_FALSE(kernels::short_conv_apply(at::zeros({B, 4, C}, cuda), at::zeros({C, 1, 5}, cuda),
                                        at::Tensor()));
  std::map<std::string, double> worst;  // "<dtype> <quantity>" -> largest relative error
  at::manual_seed(11);
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    const double tolerance = type == at::kFloat ? 1e-5 : 1e-2;
    const std::string name = c10::toString(type);
    for (int64_t K : {2, 3, 4})
      for (int64_t T : {1, 3, 64, 1000})
        for (bool with_bias : {false, true})
          for (bool with_history : {false, true}) {
            // float64 values the device dtypes hold exactly: both sides see the same operands.
            const at::Tensor u = representable({B, T, C}, type);
            const at::Tensor weight = representable({C, 1, K}, at::kFloat, 0.5);
            const at::Tensor bias = with_bias ? representable({C}, at::kFloat, 0.3) : at::Tensor();
            const at::Tensor history = with_history ? representable({B, C, K - 1}, at::kFloat) : at::Tensor();
            const at::Tensor probe = representable({B, T, C}, type);
            const std::vector<at::Tensor> values{u, weight, bias, history};
            auto ref = leaves_on(values, at::kCPU, {at::kDouble, at::kDouble, at::kDouble, at::kDouble});
            auto dev = leaves_on(values, cuda, {type, at::kFloat, at::kFloat, at::kFloat});
            REQUIRE(kernels::short_conv_apply(dev[0], dev[1], dev[3]));
            const at::Tensor y_ref = reference_conv_silu(ref[0], ref[1], ref[2], ref[3]);
            at::Tensor state = dev[3];
            const at::Tensor y = kernels::short_conv_silu(dev[0], dev[1], dev[2], with_history ? &state : nullptr);
            REQUIRE(y.scalar_type() == type);
            const auto grads_ref = torch::autograd::grad({(y_ref * probe).sum()}, defined_only(ref));
            const auto grads = torch::autograd::grad({(y.to(at::kDouble) * probe.to(cuda)).sum()},
                                                     defined_only(dev));
            std::vector<std::string> labels{"y", "du", "dweight"};
            if (with_bias) labels.push_back("dbias");
            if (with_history) labels.push_back("dhistory");
            std::vector<double> errors{test::relative_error(y, y_ref)};
            for (size_t i = 0; i < grads.size(); ++i)
              errors.push_back(test::relative_error(grads[i], grads_ref[i]));
            for (size_t i = 0; i < errors.size(); ++i) {
              INFO(name << " K=" << K << " T=" << T << " bias=" << with_bias << " history="
                        << with_history << ": " << labels[i]);
              CHECK(errors[i] <= tolerance);
              double& w = worst[name + " " + labels[i]];
              w = std::max(w, errors[i]);
            }
            if (with_history) {  // the state now holds the last K-1 inputs, out of place
              const at::Tensor tail = at::cat({history, u.transpose(1, 2)}, 2).narrow(2, T, K - 1);
              CHECK(!state.is_same(dev[3]));
              CHECK(test::relative_error(state, tail) == 0.0);
            }
            if (T == 1000 && K == 4 && with_bias) {  // the weight gradient's sum has a fixed order
              const at::Tensor y2 = kernels::short_conv_silu(dev[0], dev[1], dev[2], nullptr);
              const auto again = torch::autograd::grad({(y2.to(at::kDouble) * probe.to(cuda)).sum()},
                                                       {dev[1], dev[2]});
              const at::Tensor y1 = kernels::short_conv_silu(dev[0], dev[1], dev[2], nullptr);
              const auto first = torch::autograd::grad({(y1.to(at::kDouble) * probe.to(cuda)).sum()},
                                                       {dev[1], dev[2]});
              CHECK(at::equal(again[0], first[0]));
              CHECK(at::equal(again[1], first[1]));
            }
          }
  }
  for (const auto& [key, error] : worst)
    std::cout << "[kernels][short_conv] B=" << B << " C=" << C << " T<=1000 K<=4 " << key
              << ": max relative error " << error << "\n";
}

TEST_CASE("short conv kernel: prefill then decode steps equal the full sequence, decoding updates the state in place",
          "[kernels][short_conv][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const at::NoGradGuard no_grad;  // as decoding runs
  const int64_t B = 3, C = 203;
  // Piece lengths: shorter than the history (the new state keeps old state values), a long
  // prefill, then decode steps.
  const std::vector<int64_t> pieces{2, 995, 1, 1, 1};
  at::manual_seed(12);
  for (auto [type, state_type] : std::vector<std::pair<at::ScalarType, at::ScalarType>>{
           {at::kFloat, at::kFloat}, {at::kBFloat16, at::kFloat}, {at::kBFloat16, at::kBFloat16}})
    for (int64_t K : {2, 3, 4})
      for (bool with_bias : {false, true}) {
        const int64_t T = 1000;
        const at::Tensor u = representable({B, T, C}, type);
        const at::Tensor weight = representable({C, 1, K}, at::kFloat, 0.5);
        const at::Tensor bias = with_bias ? representable({C}, at::kFloat, 0.3) : at::Tensor();
        const at::Tensor y_ref = reference_conv_silu(u, weight, bias, at::Tensor());
        const at::Tensor u_dev = u.to(cuda, type), weight_dev = weight.to(cuda, at::kFloat);
        const at::Tensor bias_dev = with_bias ? bias.to(cuda, at::kFloat) : at::Tensor();
        at::Tensor state = at::zeros({B, C, K - 1}, at::TensorOptions(cuda).dtype(state_type));
        const void* storage = state.data_ptr();
        std::vector<at::Tensor> outputs;
        int64_t start = 0;
        for (int64_t length : pieces) {
          const at::Tensor piece = u_dev.narrow(1, start, length).contiguous();
          REQUIRE(kernels::short_conv_apply(piece, weight_dev, state));
          outputs.push_back(model::causal_conv_silu(piece, weight_dev, bias_dev, &state));
          CHECK(state.data_ptr() == storage);  // the cache's own tensor, written in place
          start += length;
          const at::Tensor tail =
              at::cat({at::zeros({B, K - 1, C}, u.options()), u}, 1).narrow(1, start, K - 1).transpose(1, 2);
          CHECK(test::relative_error(state, tail.to(state_type)) == 0.0);
        }
        const double error = test::relative_error(at::cat(outputs, 1), y_ref);
        const double decode_error = test::relative_error(at::cat({outputs[2], outputs[3], outputs[4]}, 1),
                                                         y_ref.narrow(1, T - 3, 3));
        INFO(c10::toString(type) << " state " << c10::toString(state_type) << " K=" << K
                                 << " bias=" << with_bias);
        const double tolerance = type == at::kFloat ? 1e-5 : 1e-2;
        CHECK(error <= tolerance);
        CHECK(decode_error <= tolerance);
        std::cout << "[kernels][short_conv] prefill+decode " << c10::toString(type) << " state "
                  << c10::toString(state_type) << " K=" << K << " bias=" << with_bias
                  << ": relative error " << error << " (decode steps " << decode_error << ")\n";
      }
}

TEST_CASE("short conv kernel with document starts: output and gradients equal the torch form in float64",
          "[kernels][short_conv][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  // Starts at 0, 1 (a one-token document), 63, 64, 65 (around the 64-step time tile), 129, 194,
  // 197; row 1 at 0, 128, 130. T = 300 spans five tiles.
  const std::vector<std::vector<int64_t>> rows = {{1, 62, 1, 1, 64, 65, 3, 103}, {128, 2, 170}};
  const int64_t B = 2, T = 300, C = 203;
  const at::Tensor positions = test::document_positions(rows);
  const at::Tensor starts = positions.eq(0);
  at::manual_seed(13);
  std::map<std::string, double> worst;
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    const double tolerance = type == at::kFloat ? 1e-5 : 1e-2;
    for (int64_t K : {2, 3, 4})
      for (bool with_bias : {false, true}) {
        const at::Tensor u = representable({B, T, C}, type);
        const at::Tensor weight = representable({C, 1, K}, at::kFloat, 0.5);
        const at::Tensor bias = with_bias ? representable({C}, at::kFloat, 0.3) : at::Tensor();
        const at::Tensor probe = representable({B, T, C}, type);
        const std::vector<at::Tensor> values{u, weight, bias};
        auto ref = leaves_on(values, at::kCPU, {at::kDouble, at::kDouble, at::kDouble});
        auto dev = leaves_on(values, cuda, {type, at::kFloat, at::kFloat});
        const at::Tensor starts_dev = starts.to(cuda);
        REQUIRE(kernels::short_conv_apply(dev[0], dev[1], at::Tensor(), starts_dev));
        const at::Tensor y_ref = model::causal_conv_silu(ref[0], ref[1], ref[2], nullptr, starts);
        const at::Tensor y = model::causal_conv_silu(dev[0], dev[1], dev[2], nullptr, starts_dev);
        REQUIRE(y.scalar_type() == type);
        const auto grads_ref = torch::autograd::grad({(y_ref * probe).sum()}, defined_only(ref));
        const auto grads = torch::autograd::grad({(y.to(at::kDouble) * probe.to(cuda)).sum()}, defined_only(dev));
        std::vector<std::string> labels{"y", "du", "dweight", "dbias"};
        std::vector<double> errors{test::relative_error(y, y_ref)};
        for (size_t i = 0; i < grads.size(); ++i) errors.push_back(test::relative_error(grads[i], grads_ref[i]));
        for (size_t i = 0; i < errors.size(); ++i) {
          INFO(c10::toString(type) << " K=" << K << " bias=" << with_bias << ": " << labels[i]);
          CHECK(errors[i] <= tolerance);
          double& w = worst[std::string(c10::toString(type)) + " " + labels[i]];
          w = std::max(w, errors[i]);
        }
      }
  }
  // The starts matter: without them the output differs.
  const at::Tensor u = at::randn({B, T, C}, cuda), weight = at::randn({C, 1, 4}, cuda);
  CHECK(test::relative_error(model::causal_conv_silu(u, weight, at::Tensor(), nullptr, starts.to(cuda)),
                             model::causal_conv_silu(u, weight, at::Tensor(), nullptr)) > 1e-3);
  for (const auto& [key, error] : worst)
    std::cout << "[kernels][short_conv] document starts B=" << B << " T=" << T << " C=" << C << " " << key
              << ": max relative error " << error << "\n";
}

namespace {

// `values` in a fresh CUDA tensor of `type` that starts `offset` elements into its buffer, as a
// leaf: offset 1 moves a bf16 tensor off the 16-byte boundary, so the kernels take their scalar
// path on it (offset 0: the 16-byte path wherever C is a multiple of 8).
at::Tensor leaf_at_offset(const at::Tensor& values, const at::Device& device, at::ScalarType type,
                          int64_t offset) {
  at::Tensor buffer = at::empty({values.numel() + offset}, at::TensorOptions(device).dtype(type));
  at::Tensor view = buffer.narrow(0, offset, values.numel()).view(values.sizes());
  view.copy_(values);
  return view.detach().requires_grad_(true);
}

bool aligned16(const at::Tensor& tensor) {
  return reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0;
}

// Output and gradients of short_conv_silu for u placed at `offset` (see leaf_at_offset), the
// other operands fresh leaves; conv state out of place (autograd tracks the call).
std::vector<at::Tensor> conv_and_grads(const std::vector<at::Tensor>& values, at::ScalarType type,
                                       at::ScalarType history_type, const at::Tensor& starts,
                                       const at::Tensor& probe, const at::Device& device,
                                       int64_t offset) {
  std::vector<at::Tensor> leaves = leaves_on(values, device, {type, at::kFloat, at::kFloat, history_type});
  leaves[0] = leaf_at_offset(values[0], device, type, offset);
  REQUIRE(aligned16(leaves[0]) == (offset == 0));
  REQUIRE(kernels::short_conv_apply(leaves[0], leaves[1], leaves[3], starts));
  at::Tensor state = leaves[3];
  const at::Tensor y = kernels::short_conv_silu(leaves[0], leaves[1], leaves[2],
                                                state.defined() ? &state : nullptr, starts);
  REQUIRE(y.scalar_type() == type);
  std::vector<at::Tensor> out{y};
  for (const at::Tensor& g :
       torch::autograd::grad({(y.to(at::kDouble) * probe.to(device)).sum()}, defined_only(leaves)))
    out.push_back(g);
  if (state.defined()) out.push_back(state);
  return out;
}

}  // namespace

TEST_CASE("short conv kernel: bf16 with 16-byte accesses equals the scalar path bit for bit and float64",
          "[kernels][short_conv][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const int64_t B = 2;
  const at::ScalarType type = at::kBFloat16;
  std::map<std::string, double> worst;
  at::manual_seed(14);
  // C = 8: one thread; 264: a partial block; 1032: the last block holds one thread; 1028: not a
  // multiple of 8 (scalar both times). T = 130 is not a multiple of the 64-step tile.
  for (int64_t C : {8, 264, 1028, 1032})
    for (int64_t K : {2, 3, 4})
      for (int64_t T : {1, 3, 64, 130})
        for (int history_case = 0; history_case < 3; ++history_case) {
          const bool with_history = history_case > 0, with_bias = K != 3;
          const at::ScalarType history_type = history_case == 2 ? at::kBFloat16 : at::kFloat;
          const at::Tensor u = representable({B, T, C}, type);
          const at::Tensor weight = representable({C, 1, K}, at::kFloat, 0.5);
          const at::Tensor bias = with_bias ? representable({C}, at::kFloat, 0.3) : at::Tensor();
          const at::Tensor history = with_history ? representable({B, C, K - 1}, history_type) : at::Tensor();
          const at::Tensor probe = representable({B, T, C}, type);
          const std::vector<at::Tensor> values{u, weight, bias, history};
          auto ref = leaves_on(values, at::kCPU, {at::kDouble, at::kDouble, at::kDouble, at::kDouble});
          const at::Tensor y_ref = reference_conv_silu(ref[0], ref[1], ref[2], ref[3]);
          std::vector<at::Tensor> want{y_ref};
          for (const at::Tensor& g : torch::autograd::grad({(y_ref * probe).sum()}, defined_only(ref)))
            want.push_back(g);
          const auto vector = conv_and_grads(values, type, history_type, at::Tensor(), probe, cuda, 0);
          const auto scalar = conv_and_grads(values, type, history_type, at::Tensor(), probe, cuda, 1);
          std::vector<std::string> labels{"y", "du", "dweight"};
          if (with_bias) labels.push_back("dbias");
          if (with_history) labels.push_back("dhistory");
          REQUIRE(vector.size() == labels.size() + (with_history ? 1 : 0));
          for (size_t i = 0; i < labels.size(); ++i) {
            INFO("C=" << C << " K=" << K << " T=" << T << " history=" << history_case << ": " << labels[i]);
            CHECK(at::equal(vector[i], scalar[i]));
            const double error = test::relative_error(vector[i], want[i]);
            CHECK(error <= 1e-2);
            double& w = worst[labels[i]];
            w = std::max(w, error);
          }
          if (with_history) {  // the new state: the last K-1 inputs, in the state's dtype
            const at::Tensor tail = at::cat({history, u.transpose(1, 2)}, 2).narrow(2, T, K - 1);
            CHECK(at::equal(vector.back(), scalar.back()));
            CHECK(test::relative_error(vector.back(), tail) == 0.0);
          }
        }
  for (const auto& [key, error] : worst)
    std::cout << "[kernels][short_conv] 16-byte bf16 path B=" << B << " C<=1032 T<=130 K<=4 " << key
              << ": max relative error " << error << " (equal to the scalar path)\n";
}

TEST_CASE("short conv kernel: bf16 with 16-byte accesses and document starts equals the scalar path and float64",
          "[kernels][short_conv][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  // Starts at 0, 1, 63, 64, 65, 129, 194, 197 in row 0 and 0, 128, 130 in row 1 (as above).
  const std::vector<std::vector<int64_t>> rows = {{1, 62, 1, 1, 64, 65, 3, 103}, {128, 2, 170}};
  const int64_t B = 2, T = 300, C = 264;
  const at::Tensor positions = test::document_positions(rows);
  const at::Tensor starts = positions.eq(0), starts_dev = starts.to(cuda);
  at::manual_seed(15);
  for (int64_t K : {2, 3, 4}) {
    const at::Tensor u = representable({B, T, C}, at::kBFloat16);
    const at::Tensor weight = representable({C, 1, K}, at::kFloat, 0.5);
    const at::Tensor bias = representable({C}, at::kFloat, 0.3);
    const at::Tensor probe = representable({B, T, C}, at::kBFloat16);
    const std::vector<at::Tensor> values{u, weight, bias, at::Tensor()};
    auto ref = leaves_on(values, at::kCPU, {at::kDouble, at::kDouble, at::kDouble, at::kDouble});
    const at::Tensor y_ref = model::causal_conv_silu(ref[0], ref[1], ref[2], nullptr, starts);
    std::vector<at::Tensor> want{y_ref};
    for (const at::Tensor& g : torch::autograd::grad({(y_ref * probe).sum()}, defined_only(ref)))
      want.push_back(g);
    const auto vector = conv_and_grads(values, at::kBFloat16, at::kFloat, starts_dev, probe, cuda, 0);
    const auto scalar = conv_and_grads(values, at::kBFloat16, at::kFloat, starts_dev, probe, cuda, 1);
    const std::vector<std::string> labels{"y", "du", "dweight", "dbias"};
    REQUIRE(vector.size() == labels.size());
    for (size_t i = 0; i < labels.size(); ++i) {
      INFO("K=" << K << ": " << labels[i]);
      CHECK(at::equal(vector[i], scalar[i]));
      CHECK(test::relative_error(vector[i], want[i]) <= 1e-2);
    }
  }
}

TEST_CASE("short conv kernel: bf16 prefill with 16-byte accesses then decode steps equal the full sequence",
          "[kernels][short_conv][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  REQUIRE(kernels::built_with_cuda_kernels());
  const test::PoisonOutputs poison;
  const at::Device cuda(at::kCUDA, 0);
  const at::NoGradGuard no_grad;
  const int64_t B = 3, C = 264, T = 200;
  const std::vector<int64_t> pieces{2, 130, 65, 1, 1, 1};  // prefills across tiles, then decode
  at::manual_seed(16);
  for (at::ScalarType state_type : {at::kFloat, at::kBFloat16})
    for (int64_t K : {2, 3, 4}) {
      const at::Tensor u = representable({B, T, C}, at::kBFloat16);
      const at::Tensor weight = representable({C, 1, K}, at::kFloat, 0.5);
      const at::Tensor bias = representable({C}, at::kFloat, 0.3);
      const at::Tensor y_ref = reference_conv_silu(u, weight, bias, at::Tensor());
      const at::Tensor u_dev = u.to(cuda, at::kBFloat16), weight_dev = weight.to(cuda, at::kFloat);
      const at::Tensor bias_dev = bias.to(cuda, at::kFloat);
      at::Tensor state = at::zeros({B, C, K - 1}, at::TensorOptions(cuda).dtype(state_type));
      const void* storage = state.data_ptr();
      std::vector<at::Tensor> outputs;
      int64_t start = 0;
      for (int64_t length : pieces) {
        const at::Tensor piece = u_dev.narrow(1, start, length).contiguous();
        REQUIRE(aligned16(piece));
        outputs.push_back(model::causal_conv_silu(piece, weight_dev, bias_dev, &state));
        CHECK(state.data_ptr() == storage);
        start += length;
        const at::Tensor tail =
            at::cat({at::zeros({B, K - 1, C}, u.options()), u}, 1).narrow(1, start, K - 1).transpose(1, 2);
        CHECK(test::relative_error(state, tail.to(state_type)) == 0.0);
      }
      INFO("state " << c10::toString(state_type) << " K=" << K);
      CHECK(test::relative_error(at::cat(outputs, 1), y_ref) <= 1e-2);
    }
}
