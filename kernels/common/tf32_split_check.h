// A check of tf32_split.cuh's integer rounding against the conversion instruction it replaces
// (cvt.rna.tf32.f32), run on the GPU for the tests.
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels {

// How many of `values` (fp32, on a CUDA device) split differently under tf32_split.cuh than under
// cvt.rna.tf32.f32: hi compared bit for bit, lo in the 19 bits the tensor cores read. Defined in
// builds with the CUDA kernels only (kernels::built_with_cuda_kernels()).
int64_t tf32_split_mismatches(const at::Tensor& values);

}  // namespace prime::kernels
