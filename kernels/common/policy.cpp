#include "kernels/common/policy.h"

#include <ATen/core/grad_mode.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "kernels/common/switches.h"
#include "util/error.h"

namespace prime::kernels {

namespace {

constexpr int kNoOverride = -1;
std::atomic<int> override_policy{kNoOverride};

Policy policy_from_environment() {
  return environment_switch<Policy>("PRIME_KERNELS", {{"auto", Policy::Auto, "prime's CUDA kernels where they apply"},
                                                      {"torch", Policy::Torch, "the LibTorch-ops forms"}});
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
  return environment_switch<bool>("PRIME_KERNELS_POISON", {{"0", false, "outputs left as allocated"},
                                                           {"1", true, "outputs filled with NaN first"}});
}

bool dependent_launch() {
  return environment_switch<bool>(
      "PRIME_PDL", {{"1", true, "kernels of the decode step launch with programmatic dependent launch"},
                    {"0", false, "plain launches"}});
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
  return environment_switch<bool>("PRIME_SSM_CORE", {{"fp32", false, "the chunked SSM cores on fp32 operands"},
                                                     {"bf16", true, "their bf16 forms where they apply"}});
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
