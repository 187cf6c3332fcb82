#include "kernels/common/policy.h"

#include <ATen/core/grad_mode.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "util/error.h"

namespace prime::kernels {

namespace {

constexpr int kNoOverride = -1;
std::atomic<int> override_policy{kNoOverride};

Policy policy_from_environment() {
  const char* value = std::getenv("PRIME_KERNELS");
  const std::string text = value ? value : "";
  if (text.empty() || text == "auto") return Policy::Auto;
  if (text == "torch") return Policy::Torch;
  throw user_error("PRIME_KERNELS=", text, ": must be \"auto\" (prime's CUDA kernels where they ",
                   "apply) or \"torch\" (the LibTorch-ops forms)");
}

}  // namespace

Policy policy() {
  const int forced = override_policy.load();
  if (forced != kNoOverride) return static_cast<Policy>(forced);
  return policy_from_environment();  // read each time, so a test can set it
}

bool built_with_cuda_kernels() {
#ifdef PRIME_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool use_cuda_kernels(const at::Tensor& like) {
  return built_with_cuda_kernels() && like.is_cuda() && policy() == Policy::Auto;
}

bool poison_outputs() {
  const char* value = std::getenv("PRIME_KERNELS_POISON");
  return value != nullptr && std::string(value) == "1";
}

bool dependent_launch() {
  const char* value = std::getenv("PRIME_PDL");
  if (value == nullptr || value[0] == '\0') return true;
  const std::string text = value;
  if (text == "1") return true;
  if (text == "0") return false;
  throw user_error("PRIME_PDL=", text, ": must be 1 (kernels of the decode step launch with programmatic ",
                   "dependent launch, the default) or 0 (plain launches)");
}

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return poison_outputs() ? at::full(sizes, std::numeric_limits<float>::quiet_NaN(), options)
                          : at::empty(sizes, options);
}

bool served_float_type(at::ScalarType type) {
  return type == at::kFloat || type == at::kBFloat16 || type == at::kHalf;
}

bool records_gradient(const at::Tensor& tensor) {
  return tensor.defined() && at::GradMode::is_enabled() && tensor.requires_grad();
}

bool bf16_ssm_core() {
  const char* value = std::getenv("PRIME_SSM_CORE");
  const std::string text = value ? value : "";
  if (text.empty() || text == "fp32") return false;
  if (text == "bf16") return true;
  throw user_error("PRIME_SSM_CORE=", text, ": must be \"fp32\" (the chunked SSM cores on fp32 operands) or ",
                   "\"bf16\" (their bf16 forms where they apply)");
}

at::Tensor contiguous_aligned(const at::Tensor& tensor, size_t bytes) {
  if (!tensor.defined()) return tensor;
  at::Tensor result = tensor.contiguous();
  if (reinterpret_cast<std::uintptr_t>(result.data_ptr()) % bytes != 0) result = result.clone();
  return result;
}

void require_cuda_build(const char* op) {
  if (!built_with_cuda_kernels())
    throw internal_error(op, ": this build has no CUDA kernels (configure with PRIME_CUDA=ON)");
}

ScopedKernelPolicy::ScopedKernelPolicy(Policy policy)
    : previous_(override_policy.exchange(static_cast<int>(policy))) {}

ScopedKernelPolicy::~ScopedKernelPolicy() { override_policy.store(previous_); }

}  // namespace prime::kernels
