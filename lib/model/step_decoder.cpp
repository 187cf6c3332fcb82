#include "model/step_decoder.h"

#include <ATen/core/grad_mode.h>

#include "util/error.h"

#ifdef PRIME_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace prime::model {

#ifdef PRIME_WITH_CUDA
struct StepDecoder::Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();  // the capture stream
};
#else
struct StepDecoder::Graph {};
#endif

std::string StepDecoder::graph_blocker(const HybridModel& model) {
  // MoE layers capture when their experts run as one grouped GEMM (MoeBlock: bf16 on sm_90/100,
  // experts stacked at load); the per-expert loop reads the expert counts on the host.
  for (int64_t layer = 0; layer < model.num_layers(); ++layer)
    if (const std::string reason = model.feed_forward(layer).host_sync_reason(); !reason.empty())
      return "layer " + std::to_string(layer) + " routes to experts on the host (MoE: " + reason + ")";
  return "";
}

StepDecoder::StepDecoder(HybridModel& model, ModelCache& cache, int64_t max_tokens, bool allow_graph)
    : model_(model), cache_(cache), max_tokens_(max_tokens) {
  model_.make_static(cache_, max_tokens);
  ids_ = at::zeros({cache_.batch, 1}, at::TensorOptions().dtype(at::kLong).device(model_.device()));
  use_graph_ = allow_graph && graph_possible(model_);
}

bool StepDecoder::graph_possible(const HybridModel& model) {
#ifdef PRIME_WITH_CUDA
  return model.device().is_cuda() && graph_blocker(model).empty();
#else
  return false;
#endif
}

StepDecoder::~StepDecoder() = default;

at::Tensor StepDecoder::step(const at::Tensor& ids) {
  if (cache_.length() + 1 > max_tokens_)
    throw user_error("decoding past the static cache: it holds ", max_tokens_, " tokens");
  at::NoGradGuard no_grad;
  // On a CPU model forward() checks ids_ itself; elsewhere it never reads device ids.
  if (!model_.device().is_cpu()) model_.check_token_ids(ids);
  const at::Tensor column = ids.reshape({-1, 1}).to(at::kLong);
  if (column.size(0) != ids_.size(0))
    throw user_error("decode step given ", column.size(0), " ids for a batch of ", ids_.size(0));
  ids_.copy_(column);
  ++steps_;
  if (!use_graph_) return model_.forward(ids_, &cache_).select(1, 0);
#ifdef PRIME_WITH_CUDA
  if (steps_ == 1) {
    // A first eager step on the stream the graph is captured on: it creates that stream's
    // cuBLAS handle and workspace and fills the RoPE tables, none of which may happen in capture.
    graph_ = std::make_unique<Graph>();
    // (Two synchronisations, once per decoder, order it against the surrounding stream.)
    graph_->stream = at::cuda::getStreamFromPool();
    at::cuda::getCurrentCUDAStream().synchronize();
    at::Tensor logits;
    {
      c10::cuda::CUDAStreamGuard guard(graph_->stream);
      logits = model_.forward(ids_, &cache_).select(1, 0);
    }
    graph_->stream.synchronize();
    return logits;
  }
  const int64_t before = cache_.length();
  if (steps_ == 2) {
    // Capture runs the host code once but executes nothing: the layers' host counters advanced,
    // the device state did not; the replay below does the step.
    at::cuda::getCurrentCUDAStream().synchronize();
    {
      c10::cuda::CUDAStreamGuard guard(graph_->stream);
      graph_->graph.capture_begin();
      logits_ = model_.forward(ids_, &cache_).select(1, 0);
      graph_->graph.capture_end();
    }
    graph_->stream.synchronize();
  }
  graph_->graph.replay();
  cache_.set_length(before + 1);
  return logits_;
#else
  throw internal_error("CUDA graph requested in a build without CUDA");
#endif
}

}  // namespace prime::model
