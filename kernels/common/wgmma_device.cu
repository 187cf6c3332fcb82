// wgmma_runs_on (wgmma_device.h): a probe kernel built in the same architectures as the kernels
// reports whether the machine code loaded for the device had the warpgroup MMAs compiled in.
#include "kernels/common/wgmma_device.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <map>
#include <mutex>

#include "kernels/common/cuda_check.cuh"
#include "kernels/common/wgmma.cuh"

namespace prime::kernels::detail {

namespace {

__global__ void wgmma_probe_kernel(int* enabled) { *enabled = PRIME_WGMMA_ENABLED; }

}  // namespace

bool wgmma_runs_on(const at::Device& device) {
  if (!device.is_cuda()) return false;
  static std::mutex mutex;
  static std::map<int, bool> answers;
  const std::lock_guard<std::mutex> lock(mutex);
  const int index = device.has_index() ? device.index() : at::cuda::current_device();
  if (const auto found = answers.find(index); found != answers.end()) return found->second;
  bool runs = at::cuda::getDeviceProperties(index)->major == 9;
  if (runs) {
    const at::cuda::CUDAGuard guard(index);
    // Inside a CUDA-graph capture the probe cannot wait for its answer: no warpgroup MMAs this
    // once, and the question is asked again outside.
    // (The legacy stream answers cudaErrorStreamCaptureImplicit while another stream captures.)
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    const cudaError_t asked = cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(), &capture);
    if (asked == cudaErrorStreamCaptureImplicit) {
      (void)cudaGetLastError();
      return false;
    }
    PRIME_CUDA_CHECK(asked);
    if (capture != cudaStreamCaptureStatusNone) return false;
    const at::Tensor enabled = at::zeros({1}, at::TensorOptions().device(at::kCUDA, index).dtype(at::kInt));
    wgmma_probe_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(enabled.data_ptr<int>());
    PRIME_CUDA_CHECK_LAUNCH("wgmma_probe_kernel");
    runs = enabled.item<int>() == 1;
  }
  answers.emplace(index, runs);
  return runs;
}

}  // namespace prime::kernels::detail
