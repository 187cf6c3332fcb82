// What a training step computes, for MFU (design/training.md "Numbers we report"): teacher
// forward 2·N, student forward 2·N, student backward 2·N for the activations through every layer
// plus 2·N for trained weights, plus the attention score and value products (causal: half of
// T·d per token and layer, forward; twice that backward). N counts matmul weights only (the
// embedding lookup computes nothing; lm_head does).
#pragma once

#include <ATen/ATen.h>

#include "train/models.h"
#include "train/train_options.h"

namespace prime::train {

double step_flops_per_token(const RunModels& models, const TrainOptions& options);

// Dense bf16 peak of the device in FLOP/s: `override_tflops` when > 0; a CUDA device is taken to
// be an H100/H200 (989 TFLOP/s); 0 on the CPU (MFU is not reported).
double device_peak_flops(const at::Device& device, double override_tflops);

// Peak bytes the caching allocator has handed out on a CUDA device since the last reset (NaN on
// a CPU, or in a build without CUDA); reset_peak_device_bytes starts a new window.
double peak_device_bytes(const at::Device& device);
void reset_peak_device_bytes(const at::Device& device);

}  // namespace prime::train
