#include "train/step_loss.h"

#include <optional>

#include <ATen/core/grad_mode.h>

#include "train/losses.h"
#include "util/error.h"

namespace prime::train {
namespace {

at::Tensor flat(const at::Tensor& hidden) { return hidden.reshape({-1, hidden.size(-1)}); }

// Tokens per vocabulary chunk: as asked, or so that one chunk's fp32 logits stay near 16 MB on a
// CPU (larger buffers go to fresh mmap'd pages each time, and page faults then dominate) and near
// 512 MB on a GPU (whose caching allocator reuses them).
int64_t chunk_tokens(const TrainOptions& options, const model::HybridModel& model) {
  if (options.loss_chunk_tokens > 0) return options.loss_chunk_tokens;
  const int64_t budget = model.device().is_cuda() ? (int64_t{128} << 20) : (int64_t{4} << 20);
  return std::max<int64_t>(1, budget / model.config().vocab_size);
}

}  // namespace

StepLoss compute_step_loss(const TrainOptions& options, RunModels& models, const Batch& batch) {
  model::HybridModel& student = *models.student;
  const at::Device device = student.device();
  const at::Tensor ids = batch.input_ids.to(device);
  const at::Tensor targets = batch.targets.to(device).reshape({-1});
  // Packed rows of several documents: every forward keeps them apart.
  std::optional<model::Documents> documents;
  if (batch.positions.defined()) documents = model::make_documents(batch.positions, device);
  const model::Documents* docs = documents ? &*documents : nullptr;
  model::ForwardOptions student_options;
  student_options.return_hidden = true;
  student_options.recompute = options.recompute;
  student_options.documents = docs;
  StepLoss result;

  if (options.stage == Stage::Pt) {
    const at::Tensor hidden = student.forward(ids, nullptr, student_options);
    LmLossOptions lm;
    lm.ce_weight = 1;
    lm.chunk_tokens = chunk_tokens(options, student);
    LmLossParts parts;
    result.loss = chunked_lm_loss(flat(hidden), student.lm_head(), {}, {}, targets, lm, &parts);
    result.parts["ce"] = parts.ce;
    return result;
  }

  PRIME_CHECK(models.teacher, "stage ", stage_name(options.stage), " runs with a teacher");
  model::HybridModel& teacher = *models.teacher;
  model::ForwardTrace trace;
  const bool layer_local = options.stage == Stage::Align && options.align_layers != AlignLayers::None;
  if (layer_local) trace.layers = models.replaced_layers;
  model::ForwardOptions teacher_options;
  teacher_options.return_hidden = true;
  teacher_options.trace = layer_local ? &trace : nullptr;
  teacher_options.documents = docs;
  at::Tensor teacher_hidden;
  {
    at::NoGradGuard no_grad;
    teacher_hidden = teacher.forward(ids, nullptr, teacher_options);
  }
  const at::Tensor hidden = student.forward(ids, nullptr, student_options);

  if (options.stage == Stage::Distill) {
    LmLossOptions lm;
    lm.kl_weight = 1;
    lm.ce_weight = options.ce_weight;
    lm.temperature = options.temperature;
    lm.chunk_tokens = chunk_tokens(options, student);
    LmLossParts parts;
    result.loss = chunked_lm_loss(flat(hidden), student.lm_head(), flat(teacher_hidden), teacher.lm_head(), targets,
                                  lm, &parts);
    result.parts["kl"] = parts.kl;
    if (options.ce_weight != 0) result.parts["ce"] = parts.ce;
    return result;
  }

  at::Tensor loss = normalized_mse(hidden, teacher_hidden);
  result.parts["mse_final"] = loss.item<double>();
  if (layer_local) {
    at::Tensor local = at::zeros({}, loss.options());
    for (int64_t layer : models.replaced_layers) {
      const model::LayerTrace& seen = trace.traced.at(layer);
      at::Tensor layer_loss;
      if (options.align_layers == AlignLayers::Mixer) {
        model::Mixer& mixer = student.mixer(layer);
        const at::Tensor mixed =
            docs ? mixer.forward_documents(seen.mixer_input, *docs) : mixer.forward(seen.mixer_input, nullptr);
        layer_loss = normalized_mse(mixed, seen.mixer_output);
      } else {
        layer_loss =
            normalized_mse(student.forward_layer(layer, seen.layer_input, nullptr, nullptr, docs), seen.layer_output);
      }
      local = local + layer_loss;
    }
    result.parts["mse_layers"] = local.item<double>();
    loss = loss + local;
  }
  result.loss = loss;
  return result;
}

}  // namespace prime::train
