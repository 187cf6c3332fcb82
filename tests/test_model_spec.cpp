// Model specs resolve above lib/model: plain sources load as they are, SOURCE+convert:... specs
// convert in memory, and lib/model alone refuses the latter instead of half-understanding them.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include "convert/model_spec.h"
#include "io/source.h"
#include "model/load_model.h"
#include "test_helpers.h"
#include "util/error.h"

using namespace prime;

TEST_CASE("model spec weights: a plain source as loaded, a +convert: spec with the hybrid's config", "[convert]") {
  at::NoGradGuard no_grad;
  const std::string source = (test::fixtures_dir() / "parity" / "qwen3").string();
  const io::Source resolved = io::resolve_source(source);

  const convert::SpecWeights plain = convert::load_spec_weights(source, {});
  CHECK(plain.source.dir == resolved.dir);
  CHECK(plain.config.layer_pattern == resolved.config.layer_pattern);
  CHECK(plain.weights.size() == io::load_source_weights(resolved).size());

  const convert::SpecWeights hybrid = convert::load_spec_weights(source + "+convert:pattern=GDN-*", {});
  CHECK(hybrid.source.dir == resolved.dir);
  REQUIRE(hybrid.config.layer_pattern.size() == resolved.config.layer_pattern.size());
  CHECK(hybrid.config.layer_pattern[0] == "GDN");
  CHECK(hybrid.source.config.layer_pattern == hybrid.config.layer_pattern);
  // The GDN layer's own tensors (b_proj) replace the attention layer's (q_norm is not carried).
  int gdn_tensors = 0, q_norms = 0;
  for (const auto& entry : hybrid.weights) {
    if (entry.first.rfind("model.layers.0.", 0) != 0) continue;
    gdn_tensors += entry.first.find("b_proj.weight") != std::string::npos;
    q_norms += entry.first.find("q_norm") != std::string::npos;
  }
  CHECK(gdn_tensors == 1);
  CHECK(q_norms == 0);

  // The model and the bench path see the same weights: their logits agree exactly.
  const at::Tensor ids = at::randint(0, 256, {1, 9}, at::kLong);
  auto loaded = convert::load_model_spec(source + "+convert:pattern=GDN-*", {});
  CHECK(loaded.model->mixer(0).symbol() == "GDN");
  model::HybridModel from_weights(hybrid.config, hybrid.weights);
  CHECK(at::equal(loaded.model->forward(ids), from_weights.forward(ids)));
}

TEST_CASE("model::load_model takes sources only: a +convert: spec is not a source", "[convert][bad-input]") {
  const std::string source = (test::fixtures_dir() / "parity" / "qwen3").string();
  CHECK_THROWS_AS(model::load_model(source + "+convert:pattern=GDN-*", {}), UserError);
}
