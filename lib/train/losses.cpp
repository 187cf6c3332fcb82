#include <ATen/core/grad_mode.h>

#include "train/losses.h"

#include <torch/csrc/autograd/custom_function.h>

#include "util/error.h"

namespace prime::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ChunkTerms {
  at::Tensor loss;       // scalar fp32: this chunk's weighted contribution
  at::Tensor grad_logits;  // [n, V] fp32 d(total)/d(student logits), when asked
  double kl = 0, ce = 0;
};

// One chunk: student logits z (fp32), teacher logits (or undefined), targets (or undefined).
// Scales: kl_scale = kl_weight / N, ce_scale = ce_weight / scored.
ChunkTerms chunk_terms(const at::Tensor& z, const at::Tensor& teacher_z, const at::Tensor& targets,
                       double temperature, double kl_scale, double ce_scale, bool want_grad) {
  ChunkTerms terms;
  terms.loss = at::zeros({}, z.options());
  if (want_grad) terms.grad_logits = at::zeros_like(z);
  if (teacher_z.defined() && kl_scale != 0) {
    const at::Tensor log_p_s = at::log_softmax(z / temperature, -1);
    const at::Tensor log_p_t = at::log_softmax(teacher_z / temperature, -1);
    const at::Tensor p_t = log_p_t.exp();
    // T^2 * sum_v p_t (log p_t - log p_s), per token.
    const at::Tensor kl = (p_t * (log_p_t - log_p_s)).sum(-1) * (temperature * temperature);
    const double kl_sum = kl.sum().item<double>();
    terms.kl = kl_sum;
    terms.loss = terms.loss + kl_scale * kl_sum;
    // d/dz of T^2 KL = T (p_s - p_t).
    if (want_grad) terms.grad_logits.add_((log_p_s.exp() - p_t) * (kl_scale * temperature));
  }
  if (targets.defined() && ce_scale != 0) {
    const at::Tensor scored = targets.ne(kIgnoreTarget);
    const at::Tensor safe = targets.masked_fill(scored.logical_not(), 0);
    const at::Tensor log_p = at::log_softmax(z, -1);
    const at::Tensor nll = -log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * scored;
    const double ce_sum = nll.sum().item<double>();
    terms.ce = ce_sum;
    terms.loss = terms.loss + ce_scale * ce_sum;
    if (want_grad) {
      at::Tensor grad = log_p.exp();
      grad.scatter_add_(-1, safe.unsqueeze(-1), -at::ones_like(safe, z.options()).unsqueeze(-1));
      terms.grad_logits.add_(grad * scored.unsqueeze(-1).to(z.scalar_type()) * ce_scale);
    }
  }
  return terms;
}

struct Scales {
  double kl = 0, ce = 0;
};

Scales scales_for(int64_t tokens, int64_t scored, const LmLossOptions& options) {
  Scales scales;
  scales.kl = tokens ? options.kl_weight / static_cast<double>(tokens) : 0;
  scales.ce = scored ? options.ce_weight / static_cast<double>(scored) : 0;
  return scales;
}

// In the head's dtype (bf16 heads stay bf16: no fp32 copy of a [V, d] matrix per chunk), then fp32.
at::Tensor logits_of(const at::Tensor& hidden, const at::Tensor& head) {
  return at::linear(hidden.to(head.scalar_type()), head).to(at::kFloat);
}

// Inputs that take no gradient (and may be undefined), kept out of autograd's argument list.
struct Constants {
  at::Tensor teacher_hidden, teacher_head, targets;
};

struct ChunkedLmLoss : public torch::autograd::Function<ChunkedLmLoss> {
  static at::Tensor forward(AutogradContext* context, const at::Tensor& hidden, const at::Tensor& head,
                            Constants constants, LmLossOptions options, LmLossParts* parts) {
    const at::Tensor &teacher_hidden = constants.teacher_hidden, &teacher_head = constants.teacher_head,
                     &targets = constants.targets;
    const int64_t tokens = hidden.size(0);
    const int64_t scored = targets.defined() ? targets.ne(kIgnoreTarget).sum().item<int64_t>() : 0;
    const Scales scales = scales_for(tokens, scored, options);
    double total = 0;
    LmLossParts sums;
    sums.tokens = tokens, sums.targets = scored;
    {
      at::NoGradGuard no_grad;
      for (int64_t begin = 0; begin < tokens; begin += options.chunk_tokens) {
        const int64_t n = std::min(options.chunk_tokens, tokens - begin);
        const at::Tensor z = logits_of(hidden.narrow(0, begin, n), head);
        const at::Tensor teacher_z =
            teacher_hidden.defined() ? logits_of(teacher_hidden.narrow(0, begin, n), teacher_head) : at::Tensor();
        const at::Tensor chunk_targets = targets.defined() ? targets.narrow(0, begin, n) : at::Tensor();
        ChunkTerms terms = chunk_terms(z, teacher_z, chunk_targets, options.temperature, scales.kl, scales.ce, false);
        total += terms.loss.item<double>();
        sums.kl += terms.kl, sums.ce += terms.ce;
      }
    }
    if (parts) {
      parts->tokens = tokens, parts->targets = scored;
      parts->kl = tokens ? sums.kl / tokens : 0;
      parts->ce = scored ? sums.ce / scored : 0;
    }
    context->save_for_backward({hidden, head});
    // Constants are saved as IValues (an undefined tensor is a None there).
    context->saved_data["teacher_hidden"] = teacher_hidden;
    context->saved_data["teacher_head"] = teacher_head;
    context->saved_data["targets"] = targets;
    context->saved_data["kl_scale"] = scales.kl;
    context->saved_data["ce_scale"] = scales.ce;
    context->saved_data["temperature"] = options.temperature;
    context->saved_data["chunk"] = options.chunk_tokens;
    return at::full({}, total, hidden.options().dtype(at::kFloat));
  }

  static variable_list backward(AutogradContext* context, variable_list grad_outputs) {
    const auto saved = context->get_saved_variables();
    const at::Tensor &hidden = saved[0], &head = saved[1];
    auto constant = [&](const char* key) {
      const c10::IValue& value = context->saved_data[key];
      return value.isTensor() ? value.toTensor() : at::Tensor();
    };
    const at::Tensor teacher_hidden = constant("teacher_hidden"), teacher_head = constant("teacher_head"),
                     targets = constant("targets");
    const double kl_scale = context->saved_data["kl_scale"].toDouble();
    const double ce_scale = context->saved_data["ce_scale"].toDouble();
    const double temperature = context->saved_data["temperature"].toDouble();
    const int64_t chunk = context->saved_data["chunk"].toInt();
    const at::Tensor upstream = grad_outputs[0].to(at::kFloat);
    at::Tensor grad_hidden = at::empty_like(hidden);
    at::Tensor grad_head = head.requires_grad() ? at::zeros(head.sizes(), head.options().dtype(at::kFloat)) : at::Tensor();
    at::NoGradGuard no_grad;
    for (int64_t begin = 0; begin < hidden.size(0); begin += chunk) {
      const int64_t n = std::min(chunk, hidden.size(0) - begin);
      const at::Tensor h = hidden.narrow(0, begin, n);
      const at::Tensor z = logits_of(h, head);
      const at::Tensor teacher_z =
          teacher_hidden.defined() ? logits_of(teacher_hidden.narrow(0, begin, n), teacher_head) : at::Tensor();
      const at::Tensor chunk_targets = targets.defined() ? targets.narrow(0, begin, n) : at::Tensor();
      const at::Tensor dz = chunk_terms(z, teacher_z, chunk_targets, temperature, kl_scale, ce_scale, true).grad_logits * upstream;
      grad_hidden.narrow(0, begin, n).copy_(at::matmul(dz.to(head.scalar_type()), head));
      if (grad_head.defined()) grad_head.add_(at::matmul(dz.t(), h.to(at::kFloat)));
    }
    return {grad_hidden, grad_head.defined() ? grad_head.to(head.scalar_type()) : at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor normalized_mse(const at::Tensor& student, const at::Tensor& teacher) {
  const at::Tensor target = teacher.detach().to(at::kFloat);
  // Per token, so the loss of a batch is the mean of its tokens' losses: split over micro-batches
  // or ranks it sums back to the same value (a batch-wide variance would not).
  const at::Tensor variance = target.var(-1, /*correction=*/0, /*keepdim=*/true).clamp_min(1e-12);
  return ((student.to(at::kFloat) - target).pow(2) / variance).mean();
}

at::Tensor chunked_lm_loss(const at::Tensor& student_hidden, const at::Tensor& head,
                           const at::Tensor& teacher_hidden, const at::Tensor& teacher_head,
                           const at::Tensor& targets, const LmLossOptions& options, LmLossParts* parts) {
  PRIME_CHECK(student_hidden.dim() == 2 && head.dim() == 2 && head.size(1) == student_hidden.size(1));
  PRIME_CHECK(options.chunk_tokens > 0 && options.temperature > 0);
  if (options.kl_weight != 0) {
    PRIME_CHECK(teacher_hidden.defined() && teacher_head.defined(), "KL needs the teacher");
    PRIME_CHECK(teacher_hidden.sizes() == student_hidden.sizes() && teacher_head.size(0) == head.size(0));
  }
  if (options.ce_weight != 0) PRIME_CHECK(targets.defined() && targets.size(0) == student_hidden.size(0));
  const at::Tensor teacher = options.kl_weight != 0 ? teacher_hidden.detach() : at::Tensor();
  const at::Tensor teacher_w = options.kl_weight != 0 ? teacher_head.detach() : at::Tensor();
  const at::Tensor scored = options.ce_weight != 0 ? targets : at::Tensor();
  return ChunkedLmLoss::apply(student_hidden, head, Constants{teacher, teacher_w, scored}, options, parts);
}

}  // namespace prime::train
