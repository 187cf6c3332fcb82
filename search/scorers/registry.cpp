// The scorers by name.
#include "search/scorers/scorer.h"
#include "util/error.h"

namespace prime::search {

const std::vector<ScorerInfo>& scorers() {
  static const std::vector<ScorerInfo> all = {
      {"swa-sensitivity", "each layer alone switched to a window of W: NLL increase beyond W and recall-probe accuracy drop "
                          "(L passes)", true, false,
       score_swa_sensitivity},
      {"attention-locality", "attention mass beyond distance W per layer (1 pass)", true, false,
       score_attention_locality},
      {"linearization-error", "error of each layer's SSM (from its attention) on the layer's inputs, zero-shot or "
                              "after --align-steps", true, true, score_linearization_error},
      {"kl-restore", "ground truth: KL drop when each layer alone is restored to attention in a briefly "
                     "distilled all-SSM student (L+1 distillations)", true, true, score_kl_restore},
      {"uniform", "baseline: prime-convert's uniform placement (no cost)", false, false, score_uniform},
      {"middle", "baseline: a middle block of attention layers (no cost)", false, false, score_middle},
  };
  return all;
}

std::string scorer_names() {
  std::string names;
  for (const auto& scorer : scorers()) names += (names.empty() ? "" : ", ") + scorer.name;
  return names;
}

const ScorerInfo& find_scorer(const std::string& name) {
  for (const auto& scorer : scorers())
    if (scorer.name == name) return scorer;
  throw user_error("unknown scorer '", name, "' (known: ", scorer_names(), ")");
}

}  // namespace prime::search
