#include "eval/decode_fit.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "eval/synthetic_context.h"
#include "model/kv_cache.h"
#include "util/error.h"
#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace prime::eval {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

int64_t budget_bytes(const at::Device& device, double memory_gib) {
  if (memory_gib > 0) return static_cast<int64_t>(memory_gib * kGiB);
#ifdef PRIME_WITH_CUDA
  if (device.is_cuda())
    return static_cast<int64_t>(at::cuda::getDeviceProperties(device.has_index() ? device.index() : 0)->totalGlobalMem);
#endif
  throw user_error("--fit-batch on ", device.str(), " needs --memory-gib (the memory to fill)");
}

// What the device holds now (the model's weights and anything else alive); on the CPU the
// weights a step reads.
int64_t held_bytes(const BenchModel& bench) {
#ifdef PRIME_WITH_CUDA
  const at::Device device = bench.model->device();
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    return stats.allocated_bytes[0].current;
  }
#endif
  return bench.weight_bytes_per_step + bench.expert_bytes;
}

}  // namespace

CacheBytes cache_bytes(const model::ModelCache& cache) {
  CacheBytes bytes;
  for (const auto& layer : cache.layers) {
    if (dynamic_cast<const model::KvCache*>(layer.get())) bytes.kv += layer->bytes_per_sequence();
    else bytes.state += layer->bytes_per_sequence();
  }
  return bytes;
}

BatchFit fit_decode_batch(BenchModel& bench, int64_t prompt, const DecodeBenchOptions& options) {
  PRIME_CHECK(prompt >= 1, "fit_decode_batch: prompt ", prompt);
  model::HybridModel& model = *bench.model;
  BatchFit fit;
  fit.budget_bytes = budget_bytes(model.device(), options.memory_gib);
  fit.weight_bytes = held_bytes(bench);
  fit.reserve_bytes = static_cast<int64_t>(0.08 * static_cast<double>(fit.budget_bytes));
  const int64_t total = prompt + decode_steps(options, /*graph=*/true);  // the most a point's cache holds
  {
    at::NoGradGuard no_grad;
    model::ModelCache probe = model.make_cache(1, total);
    fill_synthetic_context(model, probe, total);
    const CacheBytes bytes = cache_bytes(probe);
    fit.cache_bytes_per_sequence = bytes.kv + bytes.state;
  }
  // A step's logits (fp32, with the argmax's temporaries) and hidden rows of every layer.
  const auto& config = model.config();
  fit.activation_bytes_per_sequence = 16 * config.vocab_size + 64 * config.hidden_size;
  const int64_t room = fit.budget_bytes - fit.weight_bytes - fit.reserve_bytes;
  const int64_t per_sequence = fit.cache_bytes_per_sequence + fit.activation_bytes_per_sequence;
  fit.batch = room > 0 ? room / per_sequence : 0;
  if (fit.batch < 1)
    throw user_error("--fit-batch: ", fit.budget_bytes / kGiB, " GiB holds the weights (", fit.weight_bytes / kGiB,
                     " GiB) and the reserve (", fit.reserve_bytes / kGiB, " GiB) but not one sequence of ", total,
                     " tokens (", per_sequence / (1024.0 * 1024.0), " MiB)");
  return fit;
}

void release_cached_memory(const at::Device& device) {
#ifdef PRIME_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#else
  (void)device;
#endif
}

}  // namespace prime::eval
