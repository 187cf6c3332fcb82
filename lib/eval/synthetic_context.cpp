#include "eval/synthetic_context.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "model/gdn.h"
#include "model/gka.h"
#include "model/kv_cache.h"
#include "model/mamba2.h"
#include "util/error.h"

namespace prime::eval {
namespace {

// Keys/values are appended in pieces so that neither the random tensors nor an SWA cache before
// its eviction ever hold more than this many positions at once.
constexpr int64_t kAppendPiece = 4096;

// Recurrent and conv states: random, at the scale real states have (unit-norm keys summed with
// decay), which matters for nothing but keeps any value read finite.
void randomize(at::Tensor& state) {
  if (state.defined()) state.normal_(0.0, 0.1);
}

}  // namespace

void fill_synthetic_context(const model::HybridModel& model, model::ModelCache& cache, int64_t tokens) {
  if (tokens < 1) throw user_error("a synthetic context needs at least one token, got ", tokens);
  if (cache.length() != 0 || cache.is_static())
    throw user_error("a synthetic context fills a fresh cache; this one has seen ", cache.length(), " tokens");
  at::NoGradGuard no_grad;
  const io::ModelConfig& config = model.config();
  const auto kv_options = at::TensorOptions().dtype(model.lm_head().scalar_type()).device(model.device());
  for (auto& layer : cache.layers) {
    if (auto* kv = dynamic_cast<model::KvCache*>(layer.get())) {
      for (int64_t done = 0; done < tokens; done += kAppendPiece) {
        const int64_t piece = std::min(kAppendPiece, tokens - done);
        const std::vector<int64_t> shape = {cache.batch, config.num_key_value_heads, piece, config.head_dim};
        kv->append(at::randn(shape, kv_options), at::randn(shape, kv_options));
        kv->evict_outside_window();
      }
      continue;
    }
    if (auto* gdn = dynamic_cast<model::GdnCache*>(layer.get())) {
      for (at::Tensor* state : {&gdn->q_conv_state, &gdn->k_conv_state, &gdn->v_conv_state, &gdn->state})
        randomize(*state);
    } else if (auto* gka = dynamic_cast<model::GkaCache*>(layer.get())) {
      for (at::Tensor* state : {&gka->conv_q, &gka->conv_k, &gka->conv_v, &gka->kv_state}) randomize(*state);
      // H = sum of decayed k k^T is symmetric positive semi-definite, and the ridge solve that
      // reads it assumes so: X X^T / D keeps a step's arithmetic finite, as a real one is.
      if (gka->kk_state.defined()) {
        const at::Tensor x = at::randn_like(gka->kk_state);
        gka->kk_state.copy_(at::matmul(x, x.transpose(-1, -2)) / static_cast<double>(x.size(-1)));
      }
    } else if (auto* mamba2 = dynamic_cast<model::Mamba2Cache*>(layer.get())) {
      randomize(mamba2->conv_state);
      randomize(mamba2->state);
    } else {
      throw internal_error("fill_synthetic_context: a layer cache of a type it does not know");
    }
    layer->tokens = tokens;
  }
}

}  // namespace prime::eval
