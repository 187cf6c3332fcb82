// Transformer forward vs Hugging Face transformers on the committed tiny fixtures
// (tests/fixtures/parity, made by make_parity_fixtures.py): logits within 1e-4 relative in fp32,
// identical greedy tokens, and cached decoding equal to the full forward.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>

#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "eval/generate.h"
#include "io/safetensors.h"
#include "model/load_model.h"
#include "test_helpers.h"

using prime::test::fixtures_dir;
using prime::test::relative_error;

namespace {

std::vector<std::string> parity_cases() {
  std::ifstream in(fixtures_dir() / "parity" / "cases.json");
  auto cases = nlohmann::json::parse(in).at("cases");
  std::vector<std::string> names;
  for (const auto& entry : cases) names.push_back(entry.at("name"));
  return names;
}

}  // namespace

TEST_CASE("transformers parity: logits, greedy tokens, cached decode", "[parity]") {
  at::NoGradGuard no_grad;
  const auto cases = parity_cases();
  REQUIRE(cases.size() >= 10);
  for (const auto& name : cases) {
    SECTION(name) {
      const auto dir = fixtures_dir() / "parity" / name;
      auto reference = prime::io::SafetensorsFile::open(dir / "reference.safetensors");
      at::Tensor input_ids = reference->tensor("input_ids").unsqueeze(0);
      at::Tensor expected_logits = reference->tensor("logits");
      at::Tensor greedy_ids = reference->tensor("greedy_ids");
      const int64_t prompt_len = reference->tensor("prompt_len").item<int64_t>();

      auto loaded = prime::model::load_model(dir.string(), {at::kCPU, at::kFloat});
      auto& model = *loaded.model;

      at::Tensor logits = model.forward(input_ids).squeeze(0);
      const double logits_error = relative_error(logits, expected_logits);
      std::cout << "parity " << name << ": max relative logit error " << logits_error << "\n";
      CHECK(logits_error <= 1e-4);

      prime::eval::GenerateOptions options{greedy_ids.size(0), {}};
      auto generated = prime::eval::greedy_generate(model, input_ids.narrow(1, 0, prompt_len), options);
      std::vector<int64_t> expected(greedy_ids.data_ptr<int64_t>(), greedy_ids.data_ptr<int64_t>() + greedy_ids.size(0));
      CHECK(generated.front() == expected);

      // The logits that chose each greedy token (prefill, then one cached step per token).
      at::Tensor greedy_logits = reference->tensor("greedy_logits");
      {
        auto cache = model.make_cache(1);
        std::vector<at::Tensor> chosen{model.forward(input_ids.narrow(1, 0, prompt_len), &cache).squeeze(0)[-1]};
        for (int64_t k = 0; k + 1 < greedy_ids.size(0); ++k)
          chosen.push_back(model.forward(greedy_ids.narrow(0, k, 1).unsqueeze(0), &cache).squeeze(0)[-1]);
        const double decode_error = relative_error(at::stack(chosen), greedy_logits);
        std::cout << "parity " << name << ": max relative decode-logit error " << decode_error << "\n";
        CHECK(decode_error <= 1e-4);
      }

      // Dynamic NTK rope rotates each call's keys with that call's base, as transformers does,
      // so cached decoding legitimately differs from one full forward there.
      if (model.config().rope.type == "dynamic") continue;
      // Token-by-token through the cache equals the full forward.
      auto cache = model.make_cache(1);
      std::vector<at::Tensor> stepwise;
      const int64_t split = 5;
      stepwise.push_back(model.forward(input_ids.narrow(1, 0, split), &cache).squeeze(0));
      for (int64_t t = split; t < input_ids.size(1); ++t)
        stepwise.push_back(model.forward(input_ids.narrow(1, t, 1), &cache).squeeze(0));
      const double cache_error = relative_error(at::cat(stepwise, 0), logits);
      CHECK(cache_error <= 1e-5);
      CHECK(cache.length() == input_ids.size(1));
    }
  }
}

TEST_CASE("transformers parity on CUDA: fp32 logits and greedy tokens, bf16 close", "[parity][gpu]") {
  if (!prime::test::gpu_available_or_fail()) return;
  at::NoGradGuard no_grad;
  at::globalContext().setAllowTF32CuBLAS(false);
  for (const auto& name : parity_cases()) {
    const auto dir = fixtures_dir() / "parity" / name;
    auto reference = prime::io::SafetensorsFile::open(dir / "reference.safetensors");
    at::Tensor input_ids = reference->tensor("input_ids").unsqueeze(0);
    at::Tensor expected = reference->tensor("logits");
    auto fp32 = prime::model::load_model(dir.string(), {at::Device(at::kCUDA, 0), at::kFloat});
    const double fp32_error = relative_error(fp32.model->forward(input_ids).squeeze(0), expected);
    auto bf16 = prime::model::load_model(dir.string(), {at::Device(at::kCUDA, 0), at::kBFloat16});
    const double bf16_error = relative_error(bf16.model->forward(input_ids).squeeze(0), expected);
    std::cout << "parity cuda " << name << ": fp32 " << fp32_error << ", bf16 " << bf16_error << "\n";
    CHECK(fp32_error <= 1e-4);
    // bf16 weights round every activation to 8 bits of mantissa; these tiny models use std 0.5
    // weights, so logits are large and the relative error is bounded loosely. MoE cases are only
    // reported: their router gaps (~1e-3) are below bf16's resolution, so experts flip.
    if (fp32.model->config().moe.num_experts == 0) CHECK(bf16_error <= 0.1);
    at::Tensor greedy_ids = reference->tensor("greedy_ids");
    const int64_t prompt_len = reference->tensor("prompt_len").item<int64_t>();
    auto generated = prime::eval::greedy_generate(*fp32.model, input_ids.narrow(1, 0, prompt_len),
                                                  {greedy_ids.size(0), {}});
    CHECK(generated.front() ==
          std::vector<int64_t>(greedy_ids.data_ptr<int64_t>(), greedy_ids.data_ptr<int64_t>() + greedy_ids.size(0)));
  }
}
