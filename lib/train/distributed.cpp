#include "train/distributed.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <string>

#include "util/error.h"

namespace prime::train {

struct Distributed::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

namespace {

std::string environment(const char* name, const std::string& fallback = "") {
  const char* value = std::getenv(name);
  return value && *value ? value : fallback;
}

int64_t environment_int(const char* name, int64_t fallback) {
  const std::string text = environment(name);
  if (text.empty()) return fallback;
  try {
    return std::stoll(text);
  } catch (const std::exception&) {
    throw user_error("environment variable ", name, "=", text, " is not an integer");
  }
}

// Gradients go through buffers of about this many bytes: few collectives, bounded extra memory.
constexpr int64_t kBucketBytes = 32 << 20;

// Runs `collective` on the tensors packed into flat buckets (one dtype and device per bucket),
// then copies the results back.
template <typename Collective>
void bucketed(std::vector<at::Tensor>& tensors, Collective collective) {
  size_t begin = 0;
  while (begin < tensors.size()) {
    size_t end = begin;
    int64_t bytes = 0;
    while (end < tensors.size() && (end == begin || (bytes + tensors[end].nbytes() <= kBucketBytes &&
                                                     tensors[end].scalar_type() == tensors[begin].scalar_type() &&
                                                     tensors[end].device() == tensors[begin].device())))
      bytes += tensors[end++].nbytes();
    std::vector<at::Tensor> pieces;
    for (size_t i = begin; i < end; ++i) pieces.push_back(tensors[i].reshape({-1}));
    at::Tensor flat = at::cat(pieces);
    collective(flat);
    int64_t offset = 0;
    for (size_t i = begin; i < end; ++i) {
      const int64_t n = tensors[i].numel();
      tensors[i].copy_(flat.narrow(0, offset, n).view(tensors[i].sizes()));
      offset += n;
    }
    begin = end;
  }
}

}  // namespace

Distributed Distributed::from_environment(const at::Device& device, const std::string& backend) {
  if (backend != "auto" && backend != "nccl" && backend != "gloo")
    throw user_error("--dist-backend ", backend, ": expected auto, nccl or gloo");
  Distributed dist;
  dist.world_ = environment_int("WORLD_SIZE", 1);
  if (dist.world_ <= 1) {
    dist.world_ = 1;
    return dist;
  }
  dist.rank_ = environment_int("RANK", -1);
  if (dist.rank_ < 0 || dist.rank_ >= dist.world_)
    throw user_error("WORLD_SIZE=", dist.world_, " needs RANK in [0, ", dist.world_, ") (start ranks with torchrun or srun)");
  const std::string address = environment("MASTER_ADDR", "127.0.0.1");
  const int64_t port = environment_int("MASTER_PORT", 29500);
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(port);
  // Under torchrun the agent already serves the store on MASTER_PORT; otherwise (srun, by hand)
  // rank 0 serves it.
  store_options.isServer = environment("TORCHELASTIC_USE_AGENT_STORE") != "True" && dist.rank_ == 0;
  store_options.numWorkers = dist.world_;
  store_options.timeout = std::chrono::seconds(300);
  dist.group_ = std::make_shared<Group>();
  try {
    dist.group_->store = c10::make_intrusive<c10d::TCPStore>(address, store_options);
    const auto prefixed = c10::make_intrusive<c10d::PrefixStore>("prime-train", dist.group_->store);
    dist.local_rank_ = environment_int("LOCAL_RANK", dist.rank_);
#ifdef USE_C10D_NCCL
    const bool nccl = backend == "nccl" || (backend == "auto" && device.is_cuda());
#else
    if (backend == "nccl") throw user_error("--dist-backend nccl: this build has no NCCL (a CUDA build has it)");
    const bool nccl = false;
#endif
    if (nccl) {
#ifdef USE_C10D_NCCL
      if (!device.is_cuda()) throw user_error("--dist-backend nccl reduces CUDA tensors: train with --device cuda");
      // One GPU per rank: LOCAL_RANK's, made current before NCCL creates its communicator.
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(dist.local_rank_));
      dist.group_->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          prefixed, static_cast<int>(dist.rank_), static_cast<int>(dist.world_),
          c10::make_intrusive<c10d::ProcessGroupNCCL::Options>());
      dist.backend_ = "nccl";
      dist.scalar_device_ = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(dist.local_rank_));
#endif
    } else {
      // Gloo for CPU tensors, and for CUDA tensors too (through host memory).
      auto options = c10d::ProcessGroupGloo::Options::create();
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      dist.group_->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
          prefixed, static_cast<int>(dist.rank_), static_cast<int>(dist.world_), options);
      dist.backend_ = "gloo";
    }
  } catch (const c10::Error& error) {
    throw user_error("cannot join the process group at ", address, ":", port, " as rank ", dist.rank_, " of ",
                     dist.world_, ": ", error.what_without_backtrace());
  }
  return dist;
}

at::Device Distributed::local_device(const at::Device& device) const {
  if (world_ == 1 || !device.is_cuda() || device.has_index()) return device;
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank_));
}

void Distributed::average(std::vector<at::Tensor>& tensors) {
  if (world_ == 1) return;
  at::NoGradGuard no_grad;
  const double scale = 1.0 / static_cast<double>(world_);
  bucketed(tensors, [&](at::Tensor& flat) {
    std::vector<at::Tensor> buffer{flat};
    group_->backend->allreduce(buffer)->wait();
    flat.mul_(scale);
  });
}

double Distributed::average_scalar(double value) {
  if (world_ == 1) return value;
  std::vector<at::Tensor> buffer{at::full({1}, value, at::TensorOptions().dtype(at::kDouble).device(scalar_device_))};
  group_->backend->allreduce(buffer)->wait();
  return buffer[0].item<double>() / static_cast<double>(world_);
}

void Distributed::broadcast_parameters(std::vector<TrainedParameter>& parameters) {
  if (world_ == 1) return;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> tensors;
  for (auto& parameter : parameters) tensors.push_back(parameter.tensor.detach());
  bucketed(tensors, [&](at::Tensor& flat) {
    std::vector<at::Tensor> buffer{flat};
    group_->backend->broadcast(buffer)->wait();
  });
}

void Distributed::barrier() {
  if (world_ == 1) return;
  group_->backend->barrier()->wait();
}

}  // namespace prime::train
