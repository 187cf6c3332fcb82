#include "train/throughput.h"

#include <cmath>

#include "io/architecture.h"

#ifdef PRIME_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace prime::train {
namespace {

// Matmul weights of a model: everything but the embedding table (unless it doubles as lm_head).
double matmul_parameters(const model::HybridModel& model) {
  const io::ModelConfig& config = model.config();
  const auto& arch = io::find_architecture(config.model_type, config.architecture, config.model_type);
  double total = 0;
  for (const auto& [name, tensor] : model.weights())
    if (tensor.dim() >= 2 && name != arch.name("embed_tokens")) total += tensor.numel();
  if (config.tie_word_embeddings) total += static_cast<double>(config.vocab_size) * config.hidden_size;
  return total;
}

// Attention score + value products per token, forward, causal, for the model's attention layers.
double attention_flops_per_token(const model::HybridModel& model, int64_t seq_len) {
  const io::ModelConfig& config = model.config();
  double total = 0;
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string& symbol = config.layer_pattern.at(layer);
    if (symbol != "*" && symbol != "SWA") continue;  // SSM sequence terms are linear in T: small
    // QK^T and PV: 2 matmuls x 2 FLOPs x (T/2 keys on average) x heads x head_dim.
    total += 2.0 * seq_len * config.num_attention_heads * config.head_dim;
  }
  return total;
}

}  // namespace

double step_flops_per_token(const RunModels& models, const TrainOptions& options) {
  const double student = matmul_parameters(*models.student);
  double trained = 0;
  for (const auto& parameter : models.trained)
    if (parameter.tensor.dim() >= 2) trained += parameter.tensor.numel();
  const double student_attention = attention_flops_per_token(*models.student, options.seq_len);
  double flops = 2 * student + 2 * student + 2 * trained + 3 * student_attention;
  if (models.teacher)
    flops += 2 * matmul_parameters(*models.teacher) + attention_flops_per_token(*models.teacher, options.seq_len);
  return flops;
}

double device_peak_flops(const at::Device& device, double override_tflops) {
  if (override_tflops > 0) return override_tflops * 1e12;
  if (!device.is_cuda()) return 0;
  return 989e12;  // H100/H200 SXM dense bf16, our GPUs; others: --peak-tflops
}

double peak_device_bytes(const at::Device& device) {
#ifdef PRIME_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
    return static_cast<double>(
        stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak);
  }
#endif
  return std::nan("");
}

void reset_peak_device_bytes(const at::Device& device) {
#ifdef PRIME_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
#endif
}

}  // namespace prime::train
