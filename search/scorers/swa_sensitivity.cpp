// swa-sensitivity (the reference method, with our own probes): each layer alone switched to a
// sliding window of W tokens. Two measurements per layer:
//  - the increase in NLL on the tokens whose context is longer than W (the only ones a window
//    changes), on the scoring sequences;
//  - the drop in recall-probe accuracy: MQAR sequences (eval/mqar.h) of --seq-len tokens whose
//    filler puts every query more than W tokens after its key and value, so the switched layer
//    cannot reach the pair through its window; the teacher's accuracy is measured once.
// Both are passes from the switched layer on: the layers before it are the teacher's, so their
// outputs come from one traced pass per batch.
//
// The score combines the two terms, which have different units (nats, accuracy): each is
// standardised over the layers (minus its mean, over its spread) and score = -(z_nll +
// --recall-weight * z_recall). A term that is the same for every layer adds nothing. The recall
// term's spread is never taken below the sampling noise of an accuracy difference over the
// probe's n queries (1/sqrt(2n), the largest such standard error), so a probe the teacher cannot
// solve, whose drops are noise, cannot outweigh a real NLL signal. The cost (the calibration's
// unit) stays the NLL increase.
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "eval/mqar.h"
#include "search/scorers/scorer.h"
#include "search/scorers/scoring_passes.h"
#include "util/error.h"

namespace prime::search {
namespace {

struct RecallMeasurement {
  double baseline = 0;            // the teacher's accuracy
  std::vector<double> accuracy;   // with each layer alone windowed
  int64_t queries = 0;
};

int64_t correct_answers(const std::vector<eval::ProbeOutcome>& outcomes) {
  int64_t correct = 0;
  for (const auto& outcome : outcomes) correct += outcome.correct;
  return correct;
}

RecallMeasurement measure_recall(const ScoringContext& context,
                                 const std::vector<std::unique_ptr<model::HybridModel>>& switched) {
  const ScorerSettings& s = context.settings;
  if (!context.shard) throw internal_error("swa-sensitivity: the recall probe needs the shard");
  const eval::ProbeVocabulary vocabulary(context.shard, context.teacher->config().vocab_size, s.seed);
  eval::MqarOptions mqar;
  mqar.trials = s.probes;
  mqar.seed = s.seed;
  const auto sequences = eval::mqar_sequences(vocabulary, s.probe_pairs, s.seq_len, mqar);
  RecallMeasurement result;
  int64_t base_correct = 0;
  std::vector<int64_t> correct(switched.size(), 0);
  for (size_t first = 0; first < sequences.size(); first += static_cast<size_t>(s.batch)) {
    const std::vector<eval::ProbeSequence> chunk(
        sequences.begin() + static_cast<std::ptrdiff_t>(first),
        sequences.begin() + static_cast<std::ptrdiff_t>(std::min(sequences.size(), first + static_cast<size_t>(s.batch))));
    // A chunk of at most `batch` sequences of one length is one logits call: the teacher's traced
    // pass of it is reused by every switched model.
    TracedPass pass;
    at::Tensor pass_ids;
    base_correct += correct_answers(eval::score_probes(
        [&](const at::Tensor& ids) {
          pass_ids = ids.to(context.device);
          pass = traced_teacher_pass(*context.teacher, pass_ids);
          return pass.logits;
        },
        chunk, s.batch));
    for (size_t layer = 0; layer < switched.size(); ++layer)
      correct[layer] += correct_answers(eval::score_probes(
          [&](const at::Tensor& ids) {
            if (!at::equal(ids.to(context.device), pass_ids)) throw internal_error("probe batch changed between passes");
            const int64_t index = static_cast<int64_t>(layer);
            return logits_from_layer(*switched[layer], index, pass.trace.traced.at(index).layer_input);
          },
          chunk, s.batch));
    for (const auto& sequence : chunk) result.queries += static_cast<int64_t>(sequence.positions.size());
    log_progress(context, "swa-sensitivity recall probes", static_cast<int64_t>(first + chunk.size()),
                 static_cast<int64_t>(sequences.size()));
  }
  const double queries = static_cast<double>(result.queries);
  result.baseline = static_cast<double>(base_correct) / queries;
  for (int64_t c : correct) result.accuracy.push_back(static_cast<double>(c) / queries);
  return result;
}

}  // namespace

ScorerResult score_swa_sensitivity(const ScoringContext& context) {
  at::NoGradGuard no_grad;
  const int64_t layers = context.num_layers, window = context.settings.window;
  std::vector<std::unique_ptr<model::HybridModel>> switched;
  for (int64_t layer = 0; layer < layers; ++layer)
    switched.push_back(windowed_model(*context.teacher, {layer}, window));
  std::vector<double> nll_increase(layers, 0.0), kl(layers, 0.0);
  int64_t scored = 0;
  for (size_t b = 0; b < context.inputs.size(); ++b) {
    TracedPass pass = traced_teacher_pass(*context.teacher, context.inputs[b]);
    const at::Tensor far = beyond_window_mask(context.inputs[b].size(1), window, context.device)
                               .expand_as(context.targets[b]);
    const at::Tensor base = token_nll(pass.logits, context.targets[b]);
    scored += far.sum().item<int64_t>();
    for (int64_t layer = 0; layer < layers; ++layer) {
      const at::Tensor logits = logits_from_layer(*switched[layer], layer, pass.trace.traced.at(layer).layer_input);
      nll_increase[layer] += (token_nll(logits, context.targets[b]) - base).masked_select(far).sum().item<double>();
      kl[layer] += token_kl(pass.logits, logits).masked_select(far).sum().item<double>();
    }
    log_progress(context, "swa-sensitivity batches", static_cast<int64_t>(b) + 1,
                 static_cast<int64_t>(context.inputs.size()));
  }
  const RecallMeasurement recall = measure_recall(context, switched);
  ScorerResult result;
  result.cost_unit = "NLL increase beyond W (nats/token)";
  std::vector<double> recall_drop;
  for (int64_t layer = 0; layer < layers; ++layer) {
    nll_increase[layer] /= static_cast<double>(scored);
    kl[layer] /= static_cast<double>(scored);
    result.cost.push_back(nll_increase[layer]);
    recall_drop.push_back(recall.baseline - recall.accuracy[layer]);
  }
  const std::vector<double> z_nll = standardized(nll_increase, 0.0);
  const std::vector<double> z_recall =
      standardized(recall_drop, 1.0 / std::sqrt(2.0 * static_cast<double>(recall.queries)));
  for (int64_t layer = 0; layer < layers; ++layer)
    result.scores.push_back(-(z_nll[layer] + context.settings.recall_weight * z_recall[layer]));
  result.columns.push_back({"kl_beyond_w", kl});
  result.columns.push_back({"recall_drop", recall_drop});
  result.columns.push_back({"recall_accuracy", recall.accuracy});
  result.total_increase = all_windowed_increase(context);
  char recall_line[160];
  std::snprintf(recall_line, sizeof(recall_line),
                "; recall probe: %lld MQAR sequences x %lld pairs, teacher accuracy %.1f%%; score = -(z_nll + %g z_recall)",
                static_cast<long long>(context.settings.probes), static_cast<long long>(context.settings.probe_pairs),
                100 * recall.baseline, context.settings.recall_weight);
  result.detail = std::to_string(layers) + " single-layer windowed passes + 1 all-windowed, W=" +
                  std::to_string(window) + ", " + std::to_string(scored) + " tokens beyond W" + recall_line;
  return result;
}

}  // namespace prime::search
