// Mamba-2 mixer: the chunked (SSD), recurrent and step forms agree with each other and with the
// float64 reference; cache continuation, gradients and the GQA head mapping.
#include <catch2/catch.hpp>

#include "model/mamba2.h"
#include "reference/ssm_reference.h"
#include "test_ssm_mixer_util.h"
#include "util/error.h"

namespace {

using prime::model::Mamba2Cache;
using prime::model::Mamba2Config;
using prime::model::Mamba2Mixer;
using prime::model::TensorMap;
using namespace prime::testing;

const std::string kPrefix = "model.layers.3.mamba.";

struct Case {
  int64_t batch, length, hidden, head_dim, q_heads, kv_heads, chunk;
  uint64_t seed;
  std::string name() const {
    return shape_name(batch, length, q_heads, kv_heads, head_dim, hidden) +
           (chunk != 256 ? " chunk=" + std::to_string(chunk) : "");
  }
};

// GQA with G=4, T not a multiple of the chunk, T=1, batch > 1, several chunks.
const std::vector<Case> kCases = {
    {2, 300, 32, 16, 4, 1, 256, 11},  // G=4, 2 chunks, ragged last
    {1, 256, 24, 8, 2, 2, 256, 12},   // exactly one chunk, Hq = Hkv
    {3, 1, 32, 16, 4, 1, 256, 13},    // T=1
    {2, 130, 64, 32, 8, 2, 256, 14},  // G=4, D=32, one partial chunk
    {2, 50, 32, 16, 4, 1, 16, 15},    // many small chunks, ragged
};

struct Setup {
  prime::reference::Mamba2Dims dims;
  prime::reference::Weights weights;  // float64, prefix-relative
  Mamba2Config config;
  at::Tensor x64;
};

Setup make_setup(const Case& c) {
  Setup s;
  s.dims.hidden = c.hidden;
  s.dims.head_dim = c.head_dim;
  s.dims.num_q_heads = c.q_heads;
  s.dims.num_kv_heads = c.kv_heads;
  std::mt19937_64 rng(c.seed);
  s.weights = prime::reference::testing::random_mamba2_weights(s.dims, rng);
  s.config = Mamba2Config(c.hidden, c.head_dim, c.q_heads, c.kv_heads);
  s.config.chunk_size = c.chunk;
  s.x64 = random_input(c.batch, c.length, c.hidden, c.seed + 1000);
  return s;
}

}  // namespace

TEST_CASE("Mamba-2 chunked, recurrent and float64 reference agree", "[mamba2]") {
  SingleThreaded single_threaded;
  for (const Case& c : kCases) {
    Setup s = make_setup(c);
    Mamba2Mixer mixer(s.config, with_prefix(s.weights, kPrefix, at::kFloat), kPrefix);
    const at::Tensor x = s.x64.to(at::kFloat);
    const at::Tensor chunked = mixer.forward(x, nullptr);
    const at::Tensor recurrent = mixer.forward_recurrent(x, nullptr);
    const at::Tensor expected = prime::reference::mamba2_forward(s.dims, s.weights, s.x64);
    CHECK(chunked.scalar_type() == at::kFloat);
    CHECK(chunked.sizes() == x.sizes());
    CHECK(report("M2", "chunked-vs-recurrent", c.name(), max_rel_error(chunked, recurrent)) <=
          1e-5);
    CHECK(report("M2", "recurrent-vs-reference", c.name(), max_rel_error(recurrent, expected)) <=
          1e-5);
    CHECK(report("M2", "chunked-vs-reference", c.name(), max_rel_error(chunked, expected)) <= 1e-5);
  }
}

TEST_CASE("Mamba-2 step() token by token matches the float64 reference", "[mamba2]") {
  SingleThreaded single_threaded;
  for (const Case& c : kCases) {
    Setup s = make_setup(c);
    Mamba2Mixer mixer(s.config, with_prefix(s.weights, kPrefix, at::kFloat), kPrefix);
    const at::Tensor x = s.x64.to(at::kFloat);
    const at::Tensor expected = prime::reference::mamba2_forward(s.dims, s.weights, s.x64);
    // forward(x, cache) with T == 1 is step() itself, so step() is what is checked here.
    auto via_step = mixer.make_cache(c.batch, at::kCPU);
    std::vector<at::Tensor> outs_step;
    for (int64_t t = 0; t < c.length; ++t) outs_step.push_back(mixer.step(x.narrow(1, t, 1), *via_step));
    CHECK(report("M2", "step-vs-reference", c.name(),
                 max_rel_error(at::cat(outs_step, 1), expected)) <= 1e-5);
    CHECK(via_step->length() == c.length);
    const auto& cache = dynamic_cast<const Mamba2Cache&>(*via_step);
    CHECK(cache.state.scalar_type() == at::kFloat);
    const int64_t D = c.head_dim;
    CHECK(cache.bytes_per_sequence() ==
          4 * (c.q_heads * D * D + (c.q_heads + 2 * c.kv_heads) * D * 3));
  }
}

TEST_CASE("Mamba-2 continues from the cache when a sequence is split", "[mamba2]") {
  SingleThreaded single_threaded;
  Setup s = make_setup(kCases[0]);  // T=300
  Mamba2Mixer mixer(s.config, with_prefix(s.weights, kPrefix, at::kFloat), kPrefix);
  const at::Tensor x = s.x64.to(at::kFloat);
  const at::Tensor full = mixer.forward(x, nullptr);
  for (int64_t split : {1, 2, 100, 256, 299}) {
    auto chunked_cache = mixer.make_cache(2, at::kCPU);
    auto recurrent_cache = mixer.make_cache(2, at::kCPU);
    const at::Tensor head = x.narrow(1, 0, split), tail = x.narrow(1, split, 300 - split);
    const at::Tensor chunked = at::cat(
        {mixer.forward(head, chunked_cache.get()), mixer.forward(tail, chunked_cache.get())}, 1);
    // Recurrent prefill, then the chunked form continues from its state.
    const at::Tensor mixed = at::cat({mixer.forward_recurrent(head, recurrent_cache.get()),
                                      mixer.forward(tail, recurrent_cache.get())},
                                     1);
    const std::string name = kCases[0].name() + " split=" + std::to_string(split);
    CHECK(report("M2", "split-cache-vs-one-pass", name, max_rel_error(chunked, full)) <= 1e-5);
    CHECK(max_rel_error(mixed, full) <= 1e-5);
    CHECK(chunked_cache->length() == 300);
    const auto& a = dynamic_cast<const Mamba2Cache&>(*chunked_cache);
    const auto& b = dynamic_cast<const Mamba2Cache&>(*recurrent_cache);
    CHECK(max_rel_error(a.state, b.state) <= 1e-5);
    CHECK(max_rel_error(a.conv_state, b.conv_state) == 0.0);
  }
}

TEST_CASE("Mamba-2 chunked gradients match finite differences (float64)", "[mamba2]") {
  SingleThreaded single_threaded;
  prime::reference::Mamba2Dims dims;
  dims.hidden = 8;
  dims.head_dim = 4;
  dims.num_q_heads = 4;
  dims.num_kv_heads = 1;
  std::mt19937_64 rng(21);
  const prime::reference::Weights weights =
      prime::reference::testing::random_mamba2_weights(dims, rng);
  Mamba2Config config(8, 4, 4, 1);
  config.chunk_size = 4;  // T=10: three chunks, the last one padded
  TensorMap map = with_prefix(weights, kPrefix, at::kDouble);
  Mamba2Mixer mixer(config, map, kPrefix);
  at::Tensor x = random_input(2, 10, 8, 22).requires_grad_(true);
  const at::Tensor probe = random_input(2, 10, 8, 23);
  std::vector<std::pair<std::string, at::Tensor>> tensors = {{"x", x}};
  for (const char* name : {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log",
                           "D", "B_norm.weight", "C_norm.weight", "norm.weight",
                           "out_proj.weight"}) {
    map.at(kPrefix + name).requires_grad_(true);
    tensors.emplace_back(name, map.at(kPrefix + name));
  }
  const double worst = check_gradients(
      "M2", [&] { return (mixer.forward(x, nullptr) * probe).sum(); }, tensors, 8);
  CHECK(worst <= 1e-6);
}

TEST_CASE("Mamba-2 GQA: expanded head e reads x/B head floor(e/G)", "[mamba2]") {
  SingleThreaded single_threaded;
  // Hq=8, Hkv=2 (G=4), hidden = H*D and out_proj = I, so output block e is head e's output.
  prime::reference::Mamba2Dims dims;
  dims.hidden = 32;
  dims.head_dim = 4;
  dims.num_q_heads = 8;
  dims.num_kv_heads = 2;
  std::mt19937_64 rng(31);
  prime::reference::Weights weights = prime::reference::testing::random_mamba2_weights(dims, rng);
  weights["out_proj.weight"] = at::eye(32, at::kDouble);
  weights.erase("conv1d.bias");
  Mamba2Config config(32, 4, 8, 2);
  config.conv_bias = false;
  const at::Tensor x = random_input(1, 20, 32, 32).to(at::kFloat);
  for (int64_t kv_head = 0; kv_head < 2; ++kv_head) {
    prime::reference::Weights masked = weights;
    // Only x head `kv_head` is non-zero (rows after z's 8*4); the others give x = SiLU(0) = 0,
    // so their heads get neither state nor skip and output exactly zero.
    masked["in_proj.weight"] = weights["in_proj.weight"].clone();
    masked["in_proj.weight"].narrow(0, 32 + (1 - kv_head) * 4, 4).zero_();
    Mamba2Mixer mixer(config, with_prefix(masked, kPrefix, at::kFloat), kPrefix);
    for (const at::Tensor& out : {mixer.forward(x, nullptr), mixer.forward_recurrent(x, nullptr)}) {
      const at::Tensor per_head = out.reshape({1, 20, 8, 4}).abs().amax({0, 1, 3});
      for (int64_t e = 0; e < 8; ++e) {
        INFO("x/B head " << kv_head << ", expanded head " << e);
        if (e / 4 == kv_head)
          CHECK(per_head[e].item<float>() > 1e-3);
        else
          CHECK(per_head[e].item<float>() == 0.0f);
      }
    }
  }
}
