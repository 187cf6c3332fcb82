// Training losses (design/training.md). The LM losses over the vocabulary run in token chunks
// with a hand-written backward, so no [tokens, vocab] tensor is ever kept: with a 151K vocabulary
// that tensor alone would exceed the rest of a step's memory.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace prime::train {

// MSE over tokens and channels, each token's divided by the variance of the teacher's vector for
// that token (so values compare across models and sizes, and a batch's loss is the mean of its
// tokens'); teacher is treated as a constant.
at::Tensor normalized_mse(const at::Tensor& student, const at::Tensor& teacher);

struct LmLossOptions {
  double kl_weight = 0;      // weight of T^2 KL(teacher || student) per token (needs a teacher)
  double ce_weight = 0;      // weight of next-token cross-entropy (needs targets)
  double temperature = 1;
  int64_t chunk_tokens = 1024;
};

// Components of the last evaluation, for logging (nats per token).
struct LmLossParts {
  double kl = 0, ce = 0;
  int64_t tokens = 0, targets = 0;
};

// student_hidden [N, d] (after the final norm) and head [V, d]: student logits = h W^T, computed
// in fp32 chunk by chunk. teacher_hidden [N, d] with teacher_head [V_t, d] (V_t == V), or
// undefined when kl_weight == 0. targets [N] int64, -100 = not scored, or undefined when
// ce_weight == 0. Returns kl_weight * mean_N(T^2 KL) + ce_weight * mean_scored(CE), differentiable
// with respect to student_hidden and head. parts (optional) receives the unweighted components.
at::Tensor chunked_lm_loss(const at::Tensor& student_hidden, const at::Tensor& head,
                           const at::Tensor& teacher_hidden, const at::Tensor& teacher_head,
                           const at::Tensor& targets, const LmLossOptions& options,
                           LmLossParts* parts = nullptr);

inline constexpr int64_t kIgnoreTarget = -100;

}  // namespace prime::train
