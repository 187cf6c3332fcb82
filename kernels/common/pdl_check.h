// A check that programmatic dependent launch (pdl.cuh) works on the current device: a kernel that
// holds the next one's inputs back for tens of microseconds, and the next one, launched through
// detail::launch_kernel, which notes when it started and then copies those inputs after
// pdl_wait(). Run on the GPU by the tests.
#pragma once

namespace prime::kernels {

struct DependentLaunchProbe {
  bool overlapped = false;  // the second kernel started before the first one ended
  bool waited = false;      // and still read every value the first one wrote
};

// Runs the pair once on the current CUDA device and stream (synchronises). Defined in builds with
// the CUDA kernels only (kernels::built_with_cuda_kernels()).
DependentLaunchProbe probe_dependent_launch();

}  // namespace prime::kernels
