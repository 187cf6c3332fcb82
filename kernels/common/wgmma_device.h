// Whether this build's machine code for a device issues the warpgroup MMAs (wgmma.cuh): the device
// is a Hopper (sm_90) and the code the runtime loads for it was built for sm_90a (the default
// PRIME_CUDA_ARCHITECTURES carries it; code built for sm_90 or from sm_80's PTX has them compiled
// out, as traps).
#pragma once

#include <ATen/ATen.h>

namespace prime::kernels::detail {

// Asks a one-thread probe kernel once per device (synchronises then), the answer cached after;
// while the current stream captures a CUDA graph and no answer is cached yet: false, not cached.
// Defined in builds with the CUDA kernels only.
bool wgmma_runs_on(const at::Device& device);

}  // namespace prime::kernels::detail
