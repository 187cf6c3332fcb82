// GKA: the three forms (chunked, recurrent, step) against each other and against the float64
// reference, on seeded random inputs. Measured errors are printed for the design tables.
#include <catch2/catch.hpp>

#include <iomanip>
#include <iostream>
#include <sstream>

#include "test_gka_util.h"

using namespace prime;
using namespace prime::test_gka;

namespace {

struct Case {
  const char* name;
  Shape shape;
  int64_t batch, tokens;
};

// GQA G=4 with T not a multiple of 64, a whole chunk, T=1, a short sequence, MHA.
const Case kCases[] = {
    {"GQA G=4, B=2, T=130", {64, 16, 8, 2}, 2, 130},
    {"MHA, B=1, T=64", {32, 8, 4, 4}, 1, 64},
    {"GQA G=4, B=3, T=1", {64, 16, 8, 2}, 3, 1},
    {"GQA G=2, B=2, T=5", {32, 8, 4, 2}, 2, 5},
    {"D=128 GQA G=2, B=1, T=100", {256, 128, 2, 1}, 1, 100},
};

void report(const std::string& what, double error) {
  std::ostringstream line;
  line << "[gka] " << std::left << std::setw(66) << what << " max rel err " << std::scientific
       << std::setprecision(2) << error;
  std::cout << line.str() << std::endl;
}

}  // namespace

TEST_CASE("GKA chunked form agrees with the recurrent form (fp32)", "[gka]") {
  for (int num_iter : {30, 10}) {
    for (const Case& c : kCases) {
      const model::GkaConfig config = make_config(c.shape, {{"num_iter", num_iter}});
      const model::TensorMap w64 = random_weights(config, 11);
      model::GkaMixer mixer(config, cast_weights(w64, at::kFloat), kPrefix);
      const at::Tensor x = random_input(c.batch, c.tokens, c.shape.hidden, 12).to(at::kFloat);
      const at::Tensor chunked = mixer.forward(x, nullptr);
      const at::Tensor recurrent = mixer.forward_recurrent(x, nullptr);
      const double error = rel_error(chunked, recurrent);
      report(std::string("chunked vs recurrent N=") + std::to_string(num_iter) + ", " + c.name,
             error);
      CHECK(error <= 1e-5);
      CHECK(chunked.scalar_type() == at::kFloat);
      CHECK(chunked.sizes() == x.sizes());
    }
  }
}

TEST_CASE("GKA recurrent form agrees with the float64 reference", "[gka]") {
  for (int num_iter : {30, 10}) {
    for (const Case& c : kCases) {
      const model::GkaConfig config = make_config(c.shape, {{"num_iter", num_iter}});
      const model::TensorMap w64 = random_weights(config, 21);
      const at::Tensor x64 = random_input(c.batch, c.tokens, c.shape.hidden, 22);
      const at::Tensor expected =
          reference::gka_forward(reference_dims(config), reference_weights(w64), x64);
      model::GkaMixer mixer32(config, cast_weights(w64, at::kFloat), kPrefix);
      const double error32 = rel_error(mixer32.forward_recurrent(x64.to(at::kFloat), nullptr), expected);
      report(std::string("recurrent fp32 vs reference N=") + std::to_string(num_iter) + ", " + c.name,
             error32);
      CHECK(error32 <= 1e-5);
      const double chunked32 = rel_error(mixer32.forward(x64.to(at::kFloat), nullptr), expected);
      report(std::string("chunked fp32 vs reference N=") + std::to_string(num_iter) + ", " + c.name,
             chunked32);
      CHECK(chunked32 <= 1e-5);
      // In float64 our forms compute the same equations, so they agree to rounding.
      model::GkaMixer mixer64(config, w64, kPrefix);
      const double error64 = rel_error(mixer64.forward(x64, nullptr), expected);
      report(std::string("chunked fp64 vs reference N=") + std::to_string(num_iter) + ", " + c.name,
             error64);
      CHECK(error64 <= 1e-11);
    }
  }
}

TEST_CASE("GKA step by step and split prefill match one chunked pass", "[gka]") {
  const Shape shape{64, 16, 8, 2};
  const model::GkaConfig config = make_config(shape);
  model::GkaMixer mixer(config, cast_weights(random_weights(config, 51), at::kFloat), kPrefix);
  const int64_t B = 2, T = 150;
  const at::Tensor x = random_input(B, T, shape.hidden, 52).to(at::kFloat);
  const at::Tensor full = mixer.forward(x, nullptr);

  SECTION("token by token through step(), against the float64 reference") {
    // forward(x, cache) with T == 1 is step() itself, so step() is what is checked here.
    const at::Tensor expected = reference::gka_forward(
        reference_dims(config), reference_weights(random_weights(config, 51)),
        random_input(B, T, shape.hidden, 52));
    auto cache = mixer.make_cache(B, at::kCPU);
    std::vector<at::Tensor> steps;
    for (int64_t t = 0; t < T; ++t) steps.push_back(mixer.step(x.narrow(1, t, 1), *cache));
    const double error = rel_error(at::cat(steps, 1), expected);
    report("step() token by token vs reference, T=150", error);
    CHECK(error <= 1e-5);
    CHECK(cache->length() == T);
  }
  SECTION("chunked prefill with a cache, then more chunked, then decode") {
    auto cache = mixer.make_cache(B, at::kCPU);
    const at::Tensor first = mixer.forward(x.narrow(1, 0, 70), cache.get());    // ends mid-chunk
    const at::Tensor second = mixer.forward(x.narrow(1, 70, 77), cache.get());  // 70..146
    std::vector<at::Tensor> parts = {first, second};
    for (int64_t t = 147; t < T; ++t) parts.push_back(mixer.step(x.narrow(1, t, 1), *cache));
    const double error = rel_error(at::cat(parts, 1), full);
    report("split prefill 70+77 (cache) + 3 steps vs one pass", error);
    CHECK(error <= 1e-5);
    CHECK(cache->length() == T);
  }
  SECTION("recurrent form continues from a chunked cache; final states agree") {
    auto chunked_cache = mixer.make_cache(B, at::kCPU);
    auto recurrent_cache = mixer.make_cache(B, at::kCPU);
    mixer.forward(x.narrow(1, 0, 100), chunked_cache.get());
    mixer.forward_recurrent(x.narrow(1, 0, 100), recurrent_cache.get());
    auto& a = dynamic_cast<model::GkaCache&>(*chunked_cache);
    auto& b = dynamic_cast<model::GkaCache&>(*recurrent_cache);
    const double kk_error = rel_error(a.kk_state, b.kk_state);
    const double kv_error = rel_error(a.kv_state, b.kv_state);
    report("final H state, chunked vs recurrent, T=100", kk_error);
    report("final S state, chunked vs recurrent, T=100", kv_error);
    CHECK(kk_error <= 1e-5);
    CHECK(kv_error <= 1e-5);
    CHECK(rel_error(a.conv_q, b.conv_q) == 0.0);
    const at::Tensor rest = mixer.forward_recurrent(x.narrow(1, 100, 50), chunked_cache.get());
    const double error = rel_error(rest, full.narrow(1, 100, 50));
    report("recurrent continuing a chunked cache vs one pass", error);
    CHECK(error <= 1e-5);
  }
}

TEST_CASE("GKA cache size and bf16 weights", "[gka]") {
  const Shape shape{64, 16, 8, 2};
  const model::GkaConfig config = make_config(shape);
  const model::TensorMap w64 = random_weights(config, 61);
  model::GkaMixer mixer(config, cast_weights(w64, at::kFloat), kPrefix);
  auto cache = mixer.make_cache(3, at::kCPU);
  // conv: (q 128 + k 32 + v 32 channels) x 3 taps; H and S: 8 heads x 16 x 16; all fp32.
  CHECK(cache->bytes_per_sequence() == (192 * 3 + 2 * 8 * 16 * 16) * 4);
  CHECK(cache->length() == 0);

  model::GkaMixer mixer16(config, cast_weights(w64, at::kBFloat16), kPrefix);
  const at::Tensor x = random_input(2, 90, shape.hidden, 62).to(at::kBFloat16);
  const at::Tensor chunked = mixer16.forward(x, nullptr);
  CHECK(chunked.scalar_type() == at::kBFloat16);
  auto cache16 = mixer16.make_cache(2, at::kCPU);
  CHECK(dynamic_cast<model::GkaCache&>(*cache16).kv_state.scalar_type() == at::kFloat);
  const double forms = rel_error(chunked, mixer16.forward_recurrent(x, nullptr));
  const double vs_fp32 = rel_error(chunked, mixer.forward(x.to(at::kFloat), nullptr));
  report("bf16 weights: chunked vs recurrent (bf16 output rounding)", forms);
  report("bf16 weights vs fp32 weights", vs_fp32);
  CHECK(forms <= 1e-2);
  CHECK(vs_fp32 <= 5e-2);
}

TEST_CASE("GKA projections run in the input's dtype as the other mixers' do", "[gka]") {
  // Training keeps fp32 master weights and feeds the mixers bf16 activations (autocast): the
  // projections must then be bf16 products, not fp32 ones on an upcast x. So fp32 weights on a bf16
  // x give, bit for bit, what the same layer gives with its q, k, v, g and o projections stored
  // as bf16 (everything else, gates and convs included, computes in fp32 either way).
  const Shape shape{64, 16, 8, 2};
  const model::GkaConfig config = make_config(shape);
  const model::TensorMap w32 = cast_weights(random_weights(config, 63), at::kFloat);
  model::TensorMap rounded = w32;
  for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight", "o_proj.weight"}) {
    const std::string key = kPrefix + name;
    REQUIRE(rounded.count(key) == 1);
    rounded.at(key) = rounded.at(key).to(at::kBFloat16);
  }
  model::GkaMixer fp32_weights(config, w32, kPrefix), bf16_projections(config, rounded, kPrefix);
  const at::Tensor x = random_input(2, 70, shape.hidden, 64).to(at::kBFloat16);
  const at::Tensor out = fp32_weights.forward(x, nullptr);
  CHECK(out.scalar_type() == at::kBFloat16);
  CHECK(at::equal(out, bf16_projections.forward(x, nullptr)));
  // And an fp32 x keeps fp32 products: not the bf16 layer's output.
  CHECK(!at::equal(fp32_weights.forward(x.to(at::kFloat), nullptr).to(at::kBFloat16), out));
}

TEST_CASE("GKA with the fp32 solve (opt-in): measured errors", "[gka]") {
  // Not the default: shows what the float64 solve buys. fp32 rounding in the iterations is
  // amplified up to 1/r = 50x at the first tokens, where H is nearly low rank.
  for (int num_iter : {30, 10}) {
    for (const Case& c : kCases) {
      const model::GkaConfig config = make_config(c.shape, {{"num_iter", num_iter}});
      const model::TensorMap w64 = random_weights(config, 21);
      const at::Tensor x64 = random_input(c.batch, c.tokens, c.shape.hidden, 22);
      const at::Tensor expected =
          reference::gka_forward(reference_dims(config), reference_weights(w64), x64);
      model::GkaMixer mixer(config, cast_weights(w64, at::kFloat), kPrefix);
      mixer.set_solve_dtype(at::kFloat);
      const at::Tensor chunked = mixer.forward(x64.to(at::kFloat), nullptr);
      const at::Tensor recurrent = mixer.forward_recurrent(x64.to(at::kFloat), nullptr);
      const std::string what = std::string("fp32 solve N=") + std::to_string(num_iter) + ", " + c.name;
      report(what + ": chunked vs recurrent", rel_error(chunked, recurrent));
      report(what + ": recurrent vs reference", rel_error(recurrent, expected));
      report(what + ": chunked vs reference", rel_error(chunked, expected));
      CHECK(rel_error(chunked, expected) <= 1e-3);
      CHECK(rel_error(recurrent, expected) <= 1e-3);
    }
  }
}
