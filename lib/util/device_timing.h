// Wall-clock timing of device work: a CUDA device runs asynchronously, so a timed body ends with
// a device synchronisation.
#pragma once

#include <ATen/ATen.h>

#include <functional>

namespace prime {

// Waits for the device's queued work (nothing to wait for on the CPU).
void synchronize_device(const at::Device& device);

// Median wall time in ms of `repeats` runs of body after `warmup` untimed runs.
double median_ms(const std::function<void()>& body, const at::Device& device, int warmup, int repeats);

// Median time in ms of one call of `call` when `calls` calls are queued per timed run (so that a
// short call's timing is not its synchronisation), after `warmup` untimed runs.
double median_ms_per_call(const std::function<void()>& call, int calls, const at::Device& device, int warmup,
                          int repeats);

// Median time in ms of one call when `calls` calls are captured once in a CUDA graph and the
// graph is replayed (what a call costs inside a graphed decode step: no host launch path). The
// call runs once eagerly on the capture stream first, so that workspaces and handles exist
// before the capture. CUDA devices only (0 in builds without CUDA).
double graph_ms_per_call(const std::function<void()>& call, int calls, const at::Device& device, int warmup,
                         int repeats);

// Runs body once untimed (warm-up), then once more between cudaProfilerStart and
// cudaProfilerStop, synchronised on both sides: what a profiler started with
// `ncu --profile-from-start off` or `nsys --capture-range=cudaProfilerApi` records. CUDA devices
// only (the body runs without a range elsewhere).
void run_in_profiler_range(const std::function<void()>& body, const at::Device& device);

}  // namespace prime
