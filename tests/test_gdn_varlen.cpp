// GDN over packed documents at once (cu_seqlens, per-document chunks, short convs that restart at
// each document): the packed layout Documents derives, the conv with document starts against a
// per-document conv, and GdnMixer::forward_documents against the per-document default
// (run_per_document), output and every input and parameter gradient, fp64 and fp32.
#include <catch2/catch.hpp>

#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "model/documents.h"
#include "model/gdn.h"
#include "model/ssm_common.h"
#include "reference/ssm_reference.h"
#include "test_documents_util.h"
#include "test_helpers.h"
#include "test_ssm_mixer_util.h"

using namespace prime;

namespace {

// Ragged documents: lengths 1, 63, 64, 65 and 200 around a 64-token chunk, several per row, a
// row of one document that continues from position 3, and a row of one document from 0.
const std::vector<std::vector<int64_t>> kRows = {
    {1, 63, 64, 65, 107}, {200, 1, 99}, {300}, {65, 64, 63, 1, 1, 106}, {300}};
const std::vector<int64_t> kFirst = {0, 0, 3, 0, 0};

}  // namespace

TEST_CASE("packed documents: cu_seqlens, document starts and the per-document chunk layout", "[gdn][documents]") {
  const model::Documents documents = model::make_documents(test::document_positions({{3, 5}, {8}}, {0, 2}), at::kCPU);
  CHECK(documents.cu_seqlens_host == std::vector<int64_t>{0, 3, 8, 16});
  CHECK(documents.cu_seqlens.equal(at::tensor(std::vector<int64_t>{0, 3, 8, 16}, at::kLong)));
  const at::Tensor want_starts = at::tensor(std::vector<int64_t>{1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
                                     .view({2, 8})
                                     .to(at::kBool);
  CHECK(documents.starts.equal(want_starts));
  // Chunks of 4: [0 1 2 | 2] [3 4 5 6] [7 | 7 7 7] [8..11] [12..15].
  const model::DocumentChunks& layout = documents.chunks(4);
  CHECK(layout.count == 5);
  CHECK(layout.gather.equal(at::tensor(
      std::vector<int64_t>{0, 1, 2, 2, 3, 4, 5, 6, 7, 7, 7, 7, 8, 9, 10, 11, 12, 13, 14, 15}, at::kLong)));
  CHECK(layout.scatter.equal(at::tensor(
      std::vector<int64_t>{0, 1, 2, 4, 5, 6, 7, 8, 12, 13, 14, 15, 16, 17, 18, 19}, at::kLong)));
  CHECK(layout.starts.equal(at::tensor(std::vector<int64_t>{1, 1, 0, 1, 0}).to(at::kBool)));
  CHECK(&documents.chunks(4) == &layout);  // built once per chunk size
  const model::Documents copy = documents;
  CHECK(&copy.chunks(4) == &layout);
}

TEST_CASE("short conv with document starts equals each document convolved alone, gradients too",
          "[gdn][documents]") {
  const model::Documents documents = model::make_documents(test::document_positions(kRows, kFirst), at::kCPU);
  const int64_t B = documents.batch, T = documents.steps, C = 6;
  for (int64_t K : {2, 3, 4}) {
    for (bool with_bias : {false, true}) {
      at::manual_seed(100 + K);
      const at::Tensor u = at::randn({B, T, C}, at::kDouble).requires_grad_(true);
      const at::Tensor weight = at::randn({C, 1, K}, at::kDouble).requires_grad_(true);
      const at::Tensor bias = with_bias ? at::randn({C}, at::kDouble).requires_grad_(true) : at::Tensor();
      std::vector<at::Tensor> leaves = {u, weight};
      if (with_bias) leaves.push_back(bias);
      const at::Tensor out_weight = at::randn({B, T, C}, at::kDouble);
      const at::Tensor packed = model::causal_conv_silu(u, weight, bias, nullptr, documents.starts);
      const at::Tensor apart = model::run_per_document(documents, u, [&](const at::Tensor& part) {
        return model::causal_conv_silu(part, weight, bias, nullptr);
      });
      const auto packed_grads = torch::autograd::grad({(packed * out_weight).sum()}, leaves);
      const auto apart_grads = torch::autograd::grad({(apart * out_weight).sum()}, leaves);
      double worst = testing::norm_relative(packed, apart);
      for (size_t i = 0; i < leaves.size(); ++i) worst = std::max(worst, testing::norm_relative(packed_grads[i], apart_grads[i]));
      testing::report("conv", "starts vs per-document", "K=" + std::to_string(K) + (with_bias ? " bias" : ""),
                      worst);
      CHECK(worst <= 1e-12);
    }
  }
  // No starts: the same as the plain conv, and a conv state cannot go with starts.
  const at::Tensor u = at::randn({1, 5, 2}, at::kDouble), w = at::randn({2, 1, 3}, at::kDouble);
  const at::Tensor first_only = at::zeros({1, 5}, at::kBool).index_fill_(1, at::zeros({1}, at::kLong), true);
  CHECK(testing::norm_relative(model::causal_conv(u, w, at::Tensor(), nullptr, first_only),
                 model::causal_conv(u, w, at::Tensor(), nullptr)) <= 1e-15);
  at::Tensor state = at::zeros({1, 2, 2}, at::kDouble);
  CHECK_THROWS(model::causal_conv(u, w, at::Tensor(), &state, first_only));
}

namespace {

struct VarlenCase {
  bool conv_bias, short_conv;
  int64_t chunk;
  std::string name() const {
    return std::string(short_conv ? "conv" : "no conv") + (conv_bias ? " bias" : "") + " chunk=" +
           std::to_string(chunk);
  }
};

}  // namespace

TEST_CASE("GDN packed documents: forward_documents equals the per-document path, every gradient too",
          "[gdn][documents]") {
  testing::SingleThreaded single_threaded;
  const at::Tensor positions = test::document_positions(kRows, kFirst);
  for (const VarlenCase& c : {VarlenCase{true, true, 64}, VarlenCase{false, true, 16}, VarlenCase{false, false, 64}}) {
    reference::GdnDims dims;
    dims.hidden = 24;
    dims.head_dim = 8;
    dims.num_q_heads = 4;
    dims.num_kv_heads = 2;  // GQA: the k/v convs see fewer channels than q's
    dims.conv_bias = c.conv_bias;
    std::mt19937_64 rng(21);
    const reference::Weights weights = reference::testing::random_gdn_weights(dims, rng);
    model::GdnConfig config(dims.hidden, dims.head_dim, dims.num_q_heads, dims.num_kv_heads);
    config.conv_bias = c.conv_bias;
    config.use_short_conv = c.short_conv;
    config.chunk_size = c.chunk;
    const std::string prefix = "model.layers.0.gdn.";
    for (at::ScalarType type : {at::kDouble, at::kFloat}) {
      model::TensorMap map = testing::with_prefix(weights, prefix, type);
      std::vector<at::Tensor> leaves;
      for (auto& [name, tensor] : map) {
        tensor.requires_grad_(true);
        leaves.push_back(tensor);
      }
      model::GdnMixer mixer(config, map, prefix);
      const model::Documents documents = model::make_documents(positions, at::kCPU);
      const at::Tensor x = testing::random_input(documents.batch, documents.steps, dims.hidden, 5)
                               .to(type)
                               .requires_grad_(true);
      leaves.push_back(x);
      const testing::PackedVsApart result = testing::packed_vs_per_document(mixer, x, documents, leaves);
      const double out_error = result.out_error, worst_grad = result.worst_gradient;
      const size_t compared = result.compared;
      CHECK(compared >= (c.short_conv ? 12u : 9u));
      const std::string shape = c.name() + (type == at::kDouble ? " fp64" : " fp32");
      testing::report("GDN", "packed vs per-document out", shape, out_error);
      testing::report("GDN", "packed vs per-document worst gradient", shape, worst_grad);
      const double bound = type == at::kDouble ? 1e-10 : 1e-5;
      CHECK(out_error <= bound);
      CHECK(worst_grad <= bound);
    }
  }
}

TEST_CASE("GDN packed documents: rows of one document each take the plain forward", "[gdn][documents]") {
  reference::GdnDims dims;
  dims.hidden = 16;
  dims.head_dim = 8;
  dims.num_q_heads = 2;
  dims.num_kv_heads = 2;
  std::mt19937_64 rng(3);
  const std::string prefix = "model.layers.0.gdn.";
  model::GdnMixer mixer(model::GdnConfig(16, 8, 2, 2),
                        testing::with_prefix(reference::testing::random_gdn_weights(dims, rng), prefix, at::kDouble),
                        prefix);
  testing::check_one_document_per_row(mixer, 16);
}
