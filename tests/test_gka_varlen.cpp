// GKA over packed documents at once (GkaMixer::forward_documents: each document's own chunks,
// both states and the short convs restarting at every document) against the per-document
// default (run_per_document): output and every input and parameter gradient, fp64 and fp32,
// with ragged documents around the chunk length and a chunk of 16.
#include <catch2/catch.hpp>

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "model/documents.h"
#include "test_documents_util.h"
#include "test_gka_util.h"
#include "test_helpers.h"

using namespace prime;
using namespace prime::test_gka;

namespace {

// Lengths 1, 15, 16, 17 and 63 around the 16-token chunk, several per row, a row of one
// document that continues from position 3, and a row of one document from 0.
const std::vector<std::vector<int64_t>> kRows = {{1, 15, 16, 17, 31}, {50, 1, 29}, {80}, {17, 16, 15, 1, 1, 30}};
const std::vector<int64_t> kFirst = {0, 0, 3, 0};

}  // namespace

TEST_CASE("GKA packed documents: forward_documents equals the per-document path, every gradient too",
          "[gka][documents]") {
  const at::Tensor positions = test::document_positions(kRows, kFirst);
  for (const int num_iter : {30, 0}) {
    const model::GkaConfig config = make_config({32, 8, 4, 2}, {{"num_iter", num_iter}, {"chunk_size", 16}});
    const model::TensorMap w64 = random_weights(config, 29);
    for (at::ScalarType type : {at::kDouble, at::kFloat}) {
      model::TensorMap map = cast_weights(w64, type);
      std::vector<at::Tensor> leaves;
      for (auto& [name, tensor] : map) leaves.push_back(tensor.requires_grad_(true));
      model::GkaMixer mixer(config, map, kPrefix);
      const model::Documents documents = model::make_documents(positions, at::kCPU, 16);
      REQUIRE_FALSE(documents.one_per_row);
      at::manual_seed(7);
      const at::Tensor x = at::randn({documents.batch, documents.steps, 32}, type).requires_grad_(true);
      leaves.push_back(x);
      const testing::PackedVsApart result = testing::packed_vs_per_document(mixer, x, documents, leaves);
      const double out_error = result.out_error, worst_grad = result.worst_gradient;
      const size_t compared = result.compared;
      std::cout << "[gka] packed vs per-document, N=" << num_iter << (type == at::kDouble ? " fp64" : " fp32")
                << ": out " << out_error << ", worst of " << compared << " gradients " << worst_grad << std::endl;
      CHECK(compared >= (num_iter > 0 ? 17u : 15u));
      const double bound = type == at::kDouble ? 1e-10 : 1e-5;
      CHECK(out_error <= bound);
      CHECK(worst_grad <= bound);
    }
  }
}

TEST_CASE("GKA packed documents: rows of one document each take the plain forward", "[gka][documents]") {
  const model::GkaConfig config = make_config({32, 8, 4, 2});
  model::GkaMixer mixer(config, random_weights(config, 5), kPrefix);
  testing::check_one_document_per_row(mixer, 32);
}
