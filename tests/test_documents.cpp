// Packed rows of several documents: a forward given their positions equals the documents run
// one by one, for every layer type (attention mask and RoPE positions, SSM and short-conv state
// resets, SWA windows and sinks counted inside a document), values and gradients; the trainer
// takes document-masked shards.
#include <catch2/catch.hpp>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <sstream>

#include "data/pack.h"
#include "data/token_shard.h"
#include "model/documents.h"
#include "model/hybrid_model.h"
#include "test_helpers.h"
#include "test_hybrid_util.h"
#include "test_train_util.h"
#include "train/trainer.h"
#include "util/error.h"

using namespace prime;

namespace {

// Row 0 packs documents of 37, 70 and 21 tokens (70 > one 64-token chunk); row 1 is one document.
constexpr int64_t kSteps = 128;
const std::vector<int64_t> kLengths = {37, 70, 21};

at::Tensor packed_positions() {
  at::Tensor positions = at::empty({2, kSteps}, at::kLong);
  int64_t t = 0;
  for (int64_t length : kLengths)
    for (int64_t i = 0; i < length; ++i) positions[0][t++] = i;
  positions[1].copy_(at::arange(kSteps, at::kLong));
  return positions;
}

// Per-token CE of logits [T, V] against ids shifted by one (the last token unscored).
at::Tensor token_losses(const at::Tensor& logits, const at::Tensor& ids) {
  const int64_t steps = ids.size(0);
  return at::cross_entropy_loss(logits.narrow(0, 0, steps - 1).to(at::kDouble), ids.narrow(0, 1, steps - 1),
                                {}, at::Reduction::None);
}

}  // namespace

TEST_CASE("packed documents give the per-token loss of the documents run one by one, every layer type",
          "[hybrid][documents]") {
  at::manual_seed(7);
  const std::vector<std::string> pattern = {"GDN", "*", "M2", "SWA", "GKA", "*"};
  // SWA window 16 with 2 sink tokens: both shorter than every document, so both are exercised.
  test::Built built = test::build_hybrid(pattern, {{"window_size", 16}, {"num_sink_tokens", 2}});
  model::HybridModel model(built.config, model::prepare_weights(built.weights, {}));
  const at::Tensor ids = at::randint(0, 97, {2, kSteps}, at::kLong);
  const model::Documents documents = model::make_documents(packed_positions(), at::kCPU);
  REQUIRE(documents.buckets.size() == 2);  // padded to 64: the 37 and 21; to 128: the 70 and row 1
  CHECK(documents.buckets[0].count == 2);

  model::ForwardOptions options;
  options.documents = &documents;
  const at::Tensor packed = model.forward(ids, nullptr, options);

  int64_t start = 0;
  for (int64_t length : kLengths) {
    const at::Tensor doc = ids[0].narrow(0, start, length);
    const at::Tensor alone = model.forward(doc.unsqueeze(0))[0];
    const at::Tensor together = packed[0].narrow(0, start, length);
    const double error = test::relative_error(token_losses(together, doc), token_losses(alone, doc));
    INFO("document at " << start << " (" << length << " tokens): per-token loss relative error " << error);
    CHECK(error <= 1e-5);
    CHECK(test::relative_error(together, alone) <= 1e-5);
    start += length;
  }
  // A row holding one document is the plain forward.
  CHECK(test::relative_error(packed[1], model.forward(ids[1].unsqueeze(0))[0]) <= 1e-6);

  // Without the positions, the later documents see the earlier ones: the check above can fail.
  const at::Tensor unmasked = model.forward(ids);
  CHECK(test::relative_error(unmasked[0].narrow(0, 37, 70), packed[0].narrow(0, 37, 70)) > 1e-2);
}

TEST_CASE("packed documents: gradients equal the sum over the documents run one by one", "[hybrid][documents]") {
  at::manual_seed(8);
  const std::vector<std::string> pattern = {"GKA", "*", "GDN", "M2"};
  test::Built built = test::build_hybrid(pattern);
  model::TensorMap weights = model::prepare_weights(built.weights, {});
  std::vector<at::Tensor> leaves;
  for (auto& [name, tensor] : weights) {
    if (name.find("layers.") == std::string::npos) continue;
    tensor = tensor.detach().clone().set_requires_grad(true);
    leaves.push_back(tensor);
  }
  model::HybridModel model(built.config, weights);
  const at::Tensor ids = at::randint(0, 97, {1, kSteps}, at::kLong);
  const model::Documents documents = model::make_documents(packed_positions().narrow(0, 0, 1), at::kCPU);
  model::ForwardOptions options;
  options.documents = &documents;

  auto gradients = [&](const at::Tensor& loss) {
    std::vector<at::Tensor> out;
    for (const at::Tensor& g : torch::autograd::grad({loss}, leaves, {}, true, false, true))
      out.push_back(g.defined() ? g : at::zeros({1}));
    return out;
  };
  // The packed row also scores each document's last token predicting the next document's first;
  // the trainer ignores those targets (the next position is 0), and so does this sum.
  const at::Tensor positions = packed_positions()[0];
  const at::Tensor scored = positions.narrow(0, 1, kSteps - 1).ne(0).to(at::kDouble);
  const at::Tensor packed_loss = (token_losses(model.forward(ids, nullptr, options)[0], ids[0]) * scored).sum();
  at::Tensor alone_loss = at::zeros({}, at::kDouble);
  int64_t start = 0;
  for (int64_t length : kLengths) {
    const at::Tensor doc = ids[0].narrow(0, start, length);
    alone_loss = alone_loss + token_losses(model.forward(doc.unsqueeze(0))[0], doc).sum();
    start += length;
  }
  CHECK(test::relative_error(packed_loss, alone_loss) <= 1e-6);
  const std::vector<at::Tensor> packed = gradients(packed_loss);
  const std::vector<at::Tensor> alone = gradients(alone_loss);
  double worst = 0;
  for (size_t i = 0; i < leaves.size(); ++i) worst = std::max(worst, test::relative_error(packed[i], alone[i]));
  INFO("largest relative error of a layer parameter's gradient " << worst);
  CHECK(worst <= 1e-4);
}

TEST_CASE("document positions that do not count up from 0 are refused", "[hybrid][documents][bad-input]") {
  at::Tensor positions = at::arange(10, at::kLong).unsqueeze(0);
  positions[0][5] = 7;
  CHECK_THROWS_AS(model::make_documents(positions, at::kCPU), UserError);
  CHECK_THROWS_WITH(model::make_documents(positions, at::kCPU), Catch::Matchers::Contains("jump from 4 to 7"));
}

TEST_CASE("packed documents on CUDA: the CPU's packed forward (fp32), and bf16 within its bound", "[hybrid][documents][gpu]") {
  if (!test::gpu_available_or_fail()) return;
  at::NoGradGuard no_grad;
  at::globalContext().setAllowTF32CuBLAS(false);
  at::manual_seed(9);
  const std::vector<std::string> pattern = {"GDN", "*", "M2", "SWA", "GKA", "*"};
  test::Built built = test::build_hybrid(pattern, {{"window_size", 16}, {"num_sink_tokens", 2}});
  model::HybridModel cpu(built.config, model::prepare_weights(built.weights, {}));
  const at::Tensor ids = at::randint(0, 97, {2, kSteps}, at::kLong);
  const model::Documents cpu_documents = model::make_documents(packed_positions(), at::kCPU);
  model::ForwardOptions options;
  options.documents = &cpu_documents;
  const at::Tensor expected = cpu.forward(ids, nullptr, options);
  const at::Device cuda(at::kCUDA, 0);
  const model::Documents documents = model::make_documents(packed_positions(), cuda);
  options.documents = &documents;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    model::HybridModel gpu(built.config, model::prepare_weights(built.weights, {cuda, dtype}));
    const double error = test::relative_error(gpu.forward(ids, nullptr, options).cpu().to(at::kFloat), expected);
    std::cout << "packed documents cuda " << c10::toString(dtype) << ": vs cpu " << error << "\n";
    CHECK(error <= (dtype == at::kFloat ? 1e-5 : 5e-2));
  }
}

TEST_CASE("prime-train on a document-masked packed shard: documents kept apart, the loss differs from unmasked",
          "[train][documents]") {
  test::TrainDir dir("documents");
  // Documents of 5 to 40 ids, each ended by EOS (id 63), written as one stream.
  io::TokenShardHeader header;
  header.width = 2;
  header.vocab_size = 64;
  header.eos_id = 63;
  io::TokenShardWriter writer(dir / "docs.tok", header);
  std::vector<uint32_t> ids;
  uint64_t state = 99;
  while (ids.size() < 6000) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const int64_t length = 5 + static_cast<int64_t>((state >> 40) % 36);
    for (int64_t i = 0; i < length; ++i) ids.push_back(static_cast<uint32_t>((i * 3 + (state >> 50)) % 60));
    ids.push_back(63);
  }
  writer.append(ids);
  writer.finish();
  auto pack = [&](const std::string& out, bool mask) {
    data::PackOptions options;
    options.inputs = {dir / "docs.tok"};
    options.out = dir / out;
    options.seq_len = 64;
    options.document_mask = mask;
    data::pack_shards(options);
    return options.out;
  };
  auto run = [&](const std::string& data, const std::string& out) {
    train::TrainOptions options;
    options.stage = train::Stage::Align;
    options.model = test::kTinyTeacher + "+convert:GDN:1:1";
    options.teacher = test::kTinyTeacher;
    options.data = {data};
    options.seq_len = 64;
    options.batch_tokens = 256;
    options.tokens = 256 * 3;
    options.align_layers = train::AlignLayers::Mixer;
    options.out = dir / out;
    std::ostringstream log;
    train::run_training(options, "test", log);
    return test::step_losses(dir / (out + "/metrics.jsonl"));
  };
  const std::vector<double> masked = run(pack("masked.tok", true), "masked");
  const std::vector<double> plain = run(pack("plain.tok", false), "plain");
  REQUIRE(masked.size() == 3);
  REQUIRE(plain.size() == 3);
  for (double loss : masked) CHECK(std::isfinite(loss));
  // Same rows, same order: only the document boundaries differ.
  CHECK(std::abs(masked.front() - plain.front()) > 1e-4 * std::abs(plain.front()));
}
