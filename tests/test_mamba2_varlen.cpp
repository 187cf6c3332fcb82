// Mamba-2 over packed documents at once (Mamba2Mixer::forward_documents: each document's own
// chunks in the Documents layout, the SSD state and the short conv restarting at every document)
// against the per-document default (run_per_document): output and every input and parameter
// gradient, fp64 and fp32, ragged documents around the 64-step chunk the packed form uses.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "model/documents.h"
#include "model/mamba2.h"
#include "reference/ssm_reference.h"
#include "test_documents_util.h"
#include "test_helpers.h"
#include "test_ssm_mixer_util.h"

using namespace prime;

namespace {

// Lengths 1, 63, 64, 65 and up to 300 around the 64-step chunk, several per row, a row of one
// document that continues from position 3, and rows of one document from 0.
const std::vector<std::vector<int64_t>> kRows = {
    {1, 63, 64, 65, 107}, {200, 1, 99}, {300}, {65, 64, 63, 1, 1, 106}, {300}};
const std::vector<int64_t> kFirst = {0, 0, 3, 0, 0};

struct VarlenCase {
  int64_t chunk, q_heads, kv_heads;
  bool qk_norm;
  std::string name() const {
    return "chunk=" + std::to_string(chunk) + " Hq=" + std::to_string(q_heads) + " Hkv=" + std::to_string(kv_heads) +
           (qk_norm ? " B/C norms" : "");
  }
};

}  // namespace

TEST_CASE("Mamba-2 packed documents: forward_documents equals the per-document path, every gradient too",
          "[mamba2][documents]") {
  testing::SingleThreaded single_threaded;
  const at::Tensor positions = test::document_positions(kRows, kFirst);
  // chunk 256 (the model's default) packs in chunks of 64; chunk 16 in chunks of 16.
  for (const VarlenCase& c : {VarlenCase{256, 4, 1, false}, VarlenCase{16, 4, 2, true}, VarlenCase{64, 2, 2, false}}) {
    reference::Mamba2Dims dims;
    dims.hidden = 24;
    dims.head_dim = 8;
    dims.num_q_heads = c.q_heads;
    dims.num_kv_heads = c.kv_heads;
    std::mt19937_64 rng(31);
    const reference::Weights weights = reference::testing::random_mamba2_weights(dims, rng);
    model::Mamba2Config config(dims.hidden, dims.head_dim, dims.num_q_heads, dims.num_kv_heads);
    config.chunk_size = c.chunk;
    config.use_qk_norm = c.qk_norm;
    const std::string prefix = "model.layers.0.mamba.";
    for (at::ScalarType type : {at::kDouble, at::kFloat}) {
      model::TensorMap map = testing::with_prefix(weights, prefix, type);
      std::vector<at::Tensor> leaves;
      for (auto& [name, tensor] : map) leaves.push_back(tensor.requires_grad_(true));
      model::Mamba2Mixer mixer(config, map, prefix);
      const model::Documents documents = model::make_documents(positions, at::kCPU);
      REQUIRE_FALSE(documents.one_per_row);
      const at::Tensor x =
          testing::random_input(documents.batch, documents.steps, dims.hidden, 7).to(type).requires_grad_(true);
      leaves.push_back(x);
      const testing::PackedVsApart result = testing::packed_vs_per_document(mixer, x, documents, leaves);
      CHECK(result.compared == leaves.size() - (c.qk_norm ? 0 : 2));  // unused B/C norm weights have none
      const std::string shape = c.name() + (type == at::kDouble ? " fp64" : " fp32");
      testing::report("Mamba-2", "packed vs per-document out", shape, result.out_error);
      testing::report("Mamba-2", "packed vs per-document worst gradient", shape, result.worst_gradient);
      const double bound = type == at::kDouble ? 1e-10 : 1e-5;
      CHECK(result.out_error <= bound);
      CHECK(result.worst_gradient <= bound);
    }
  }
}

TEST_CASE("Mamba-2 packed documents: rows of one document each take the plain forward", "[mamba2][documents]") {
  reference::Mamba2Dims dims;
  dims.hidden = 16;
  dims.head_dim = 8;
  dims.num_q_heads = 2;
  dims.num_kv_heads = 2;
  std::mt19937_64 rng(3);
  const std::string prefix = "model.layers.0.mamba.";
  model::Mamba2Mixer mixer(
      model::Mamba2Config(16, 8, 2, 2),
      testing::with_prefix(reference::testing::random_mamba2_weights(dims, rng), prefix, at::kDouble), prefix);
  testing::check_one_document_per_row(mixer, 16);
}

TEST_CASE("SSD chunked form: malformed chunk starts are refused", "[mamba2][documents]") {
  const at::Tensor x = at::randn({1, 32, 2, 4}), delta = at::rand({1, 32, 2}), A = -at::ones({2});
  const at::Tensor Bm = at::randn({1, 32, 2, 4});
  CHECK_THROWS_WITH(model::ssd_chunked(x, delta, A, Bm, Bm, at::Tensor(), 16, at::ones({3}, at::kBool)),
                    Catch::Contains("chunk_starts must be [2] bool"));
  CHECK_THROWS_WITH(model::ssd_chunked(x, delta, A, Bm, Bm, at::Tensor(), 10, at::ones({3}, at::kBool)),
                    Catch::Contains("chunk_starts must be [3] bool"));
}
