// Data parallelism over c10d process groups, started by torchrun or srun (RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT, LOCAL_RANK in the environment): each rank reads its own slice of the
// data, gradients of the trained tensors are averaged after backward, rank 0 writes checkpoints
// and metrics. Without those variables it is one process and every call is a no-op.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "train/parameters.h"

namespace prime::train {

class Distributed {
 public:
  // backend: "nccl" (CUDA tensors, GPU to GPU), "gloo" (CPU tensors, or CUDA tensors through
  // host memory) or "auto": NCCL when `device` is CUDA and the build has it, else Gloo.
  // UserError when the variables are inconsistent, the backend is unknown or unavailable, or the
  // group cannot be joined.
  static Distributed from_environment(const at::Device& device = at::kCPU, const std::string& backend = "auto");

  const std::string& backend() const { return backend_; }

  int64_t rank() const { return rank_; }
  int64_t world() const { return world_; }
  // "cuda" without an index means this rank's GPU (LOCAL_RANK) when several ranks run.
  at::Device local_device(const at::Device& device) const;
  // Averages the tensors in place across ranks (bucketed into flat buffers).
  void average(std::vector<at::Tensor>& tensors);
  double average_scalar(double value);
  // Rank 0's values to every rank (so all start from the same weights).
  void broadcast_parameters(std::vector<TrainedParameter>& parameters);
  void barrier();

  struct Group;

 private:
  int64_t rank_ = 0, world_ = 1, local_rank_ = 0;
  std::string backend_ = "none";
  at::Device scalar_device_ = at::kCPU;  // where average_scalar's buffer lives (NCCL: the GPU)
  std::shared_ptr<Group> group_;
};

}  // namespace prime::train
