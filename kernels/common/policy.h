// Which implementation the model's ops use where prime has a kernel (the SSM cores, the short
// conv, the decode step's attention, RMSNorm and RoPE): prime's CUDA kernels (kernels/<op>/) on
// CUDA tensors, or the LibTorch-ops forms in lib/model (the correctness reference). Chosen by the
// PRIME_KERNELS environment variable: unset or "auto" = the kernels wherever they apply,
// "torch" = the torch-ops forms everywhere. Tests and prime-bench switch it with
// ScopedKernelPolicy to run both paths side by side in one process.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

enum class Policy { Auto, Torch };

// The policy in force: a ScopedKernelPolicy's if one is alive, else PRIME_KERNELS (any other
// value than auto/torch is a UserError naming the variable).
Policy policy();

// True when this build compiled the CUDA kernels (PRIME_CUDA on and nvcc found).
bool built_with_cuda_kernels();

// The hook every op's dispatch asks first: a CUDA tensor, kernels built, policy Auto.
bool use_cuda_kernels(const at::Tensor& like);

// PRIME_KERNELS_POISON=1 makes the launchers fill their outputs with NaN before writing them,
// so a test sees any element a kernel leaves unwritten.
bool poison_outputs();

// Whether the kernels that keep kernels/common/pdl.cuh's contract launch with programmatic dependent
// launch (each overlapping the tail of the kernel before it): yes unless PRIME_PDL=0 (read at each
// launch, so a benchmark times both in one process; any other value than 0/1 is a UserError).
bool dependent_launch();

// A kernel's output tensor: NaN-filled under poison_outputs(), uninitialised otherwise.
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// The floating dtypes the inference kernels (RMSNorm, RoPE, the decode projection) serve: fp32,
// bf16, fp16.
bool served_float_type(at::ScalarType type);

// Whether autograd would record an op on `tensor` (grad mode on and it requires grad; undefined:
// no). The inference kernels are no autograd functions, so such a call keeps the torch form.
bool records_gradient(const at::Tensor& tensor);

// PRIME_SSM_CORE: "bf16" makes the chunked SSM cores that have a bf16 form run fp32 operands
// through it (the operands cast to bf16, the output returned in fp32): GKA's bf16 forward when no
// gradient is recorded (prefill, evaluation), GDN's bf16 forward with or without (in training with its
// written-out backward in fp32), Mamba-2's forward and backward (training too), and in training GKA's
// solve forward on bf16x3 products (its backward stays fp32);
// unset or "fp32" keeps the fp32 forms. Any other value is a UserError naming the variable. Read
// at each call.
bool bf16_ssm_core();

// `tensor` contiguous, copied where its data does not start `bytes`-aligned (a view's offset):
// the kernels' vector and fragment accesses need it. Undefined stays undefined.
at::Tensor contiguous_aligned(const at::Tensor& tensor, size_t bytes);

// Throws an InternalError naming `op` when this build has no CUDA kernels (a dispatch bug: the
// op's *_apply predicate is false there).
void require_cuda_build(const char* op);

class ScopedKernelPolicy {
 public:
  explicit ScopedKernelPolicy(Policy policy);
  ~ScopedKernelPolicy();
  ScopedKernelPolicy(const ScopedKernelPolicy&) = delete;
  ScopedKernelPolicy& operator=(const ScopedKernelPolicy&) = delete;

 private:
  int previous_;
};

}  // namespace prime::kernels
