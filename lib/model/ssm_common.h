// Pieces shared by the SSM mixers (GKA, GDN, Mamba-2): the short causal conv, GQA head
// expansion, the decay gate, L2 normalisation (the norms are in rms_norm.h). Math in
// design/ssm-layers.md ("Shared pieces").
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "model/linear.h"
#include "model/mixer.h"
#include "model/rms_norm.h"
#include "model/weights.h"
#include "util/error.h"

namespace prime::model {

// Depthwise causal conv over time, before the activation: y_t[c] = bias[c] +
// sum_j weight[c,0,j] * u_{t-K+1+j}[c], zeros (or `conv_state`) before t = 0.
// u [B,T,C], weight [C,1,K], bias [C] or undefined. If conv_state is given ([B,C,K-1], the last
// K-1 inputs of the previous call) it is read as the history and replaced by the new last K-1
// inputs. Returns [B,T,C] in u's dtype.
// starts [B,T] bool (packed documents, Documents::starts) or undefined: a token flagged true
// begins a document, and no window reaches back across it (as if each document started from a
// zero conv state). Exclusive with conv_state.
at::Tensor causal_conv(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                       at::Tensor* conv_state, const at::Tensor& starts = at::Tensor());

// silu(causal_conv(u, weight, bias, conv_state, starts)), same operands and state hand-over: the
// one place every SSM mixer's short conv goes through. On CUDA, prime's fused kernel
// (kernels/short_conv) serves wherever kernels::short_conv_apply holds.
at::Tensor causal_conv_silu(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                            at::Tensor* conv_state, const at::Tensor& starts = at::Tensor());

// Writes `value` into the cache tensor `slot` in place, in slot's dtype, so the cache keeps its
// memory (see LayerCache); an undefined slot takes a contiguous copy of value, and so does any
// slot while autograd tracks the state.
void store_state(at::Tensor& slot, const at::Tensor& value);

// GQA expansion [B,T,Hkv,D] -> [B,T,Hkv*groups,D]; expanded head e reads kv head floor(e/groups).
at::Tensor expand_heads(const at::Tensor& x, int64_t groups);

// Log of the per-step decay, fp32: g = -exp(A_log) * softplus(a + dt_bias). a [B,T,H].
at::Tensor log_decay(const at::Tensor& a, const at::Tensor& A_log, const at::Tensor& dt_bias);

// x / (||x||_2 + eps) over the last dim (GKA's normalisation: eps outside the root).
at::Tensor l2_normalize(const at::Tensor& x, double eps);

// x * rsqrt(||x||_2^2 + 1e-6) * scale over the last dim (GDN's normalisation: eps inside the
// root, the attention scale folded in). Not interchangeable with l2_normalize near x = 0.
at::Tensor l2_normalize_inside(const at::Tensor& x, double scale);

// --- The wiring the SSM mixers' forms share (projection dtype, input and cache checks, state
// hand-over). Errors name the layer as "<symbol> layer <prefix>".

// SSM mixers run outside autocast: under a bf16 autocast region (training on CUDA) their
// recurrences, decays and states stay fp32, as design/ssm-layers.md requires, and the chunked
// forms' triangular solves (which have no bf16 kernels) get fp32. Projections keep the input's
// dtype. Construct one at the top of a mixer's forward.
struct OutsideAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// fp32 internals; float64 stays float64 so that gradients can be checked against finite
// differences.
inline at::ScalarType ssm_compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// x W^T in x's dtype (the weight is cast, so bf16 weights serve an fp32 computation).
inline at::Tensor project(const at::Tensor& x, const at::Tensor& weight) {
  return model::linear(x, weight.to(x.scalar_type()));
}

// A decode token's projections x [B, 1, hidden] by each defined weight, as project() gives them,
// in one launch where the decode kernel serves them all (model::linear_group): [B, N] each.
inline std::vector<at::Tensor> project_token_group(const at::Tensor& x,
                                                  std::initializer_list<const at::Tensor*> weights) {
  std::vector<at::Tensor> cast;
  for (const at::Tensor* weight : weights)
    if (weight->defined()) cast.push_back(weight->to(x.scalar_type()));
  std::vector<at::Tensor> outs = linear_group(x, cast);
  for (at::Tensor& out : outs) out = out.reshape({x.size(0), out.size(-1)});
  return outs;
}

// x must be [B, T, hidden]: a wrong shape is the caller's input, so a UserError.
inline void check_mixer_input(const at::Tensor& x, int64_t hidden, const char* symbol,
                              const std::string& prefix) {
  if (x.dim() != 3 || x.size(2) != hidden)
    throw user_error(symbol, " layer ", prefix, ": input must be [B, T, ", hidden, "], got ",
                     shape_string(x.sizes()));
}

// The packed-documents form's input: x [B, T, hidden] with [B, T] the rows `documents` describes.
inline void check_documents_input(const at::Tensor& x, const Documents& documents, int64_t hidden, const char* symbol,
                                  const std::string& prefix) {
  check_mixer_input(x, hidden, symbol, prefix);
  PRIME_CHECK(x.size(0) == documents.batch && x.size(1) == documents.steps, symbol, " layer ", prefix, ": input ",
              x.sizes(), " for documents of ", documents.batch, " x ", documents.steps);
}

// The mixer's own cache type behind `cache` (nullptr without one). Another layer's cache or
// another batch size is a programming error. CacheT has batch().
template <typename CacheT>
CacheT* typed_cache(LayerCache* cache, const at::Tensor& x, const char* symbol,
                    const std::string& prefix) {
  if (!cache) return nullptr;
  auto* typed = dynamic_cast<CacheT*>(cache);
  PRIME_CHECK(typed != nullptr, symbol, " layer ", prefix, " was given another layer's cache");
  PRIME_CHECK(typed->batch() == x.size(0), symbol, " layer ", prefix, ": cache batch ",
              typed->batch(), " does not match the input batch ", x.size(0));
  return typed;
}

// Whether a decode step may write the cache's recurrent state in place: no autograd recording,
// and the state already contiguous in the step's compute dtype (else the out-of-place step and
// store_state, which also keep a tracked state a node of the graph).
inline bool state_updates_in_place(const at::Tensor& state, at::ScalarType type) {
  return !at::GradMode::is_enabled() && state.defined() && state.is_contiguous() && state.scalar_type() == type &&
         !state.requires_grad();
}
inline bool state_updates_in_place(const at::Tensor& state, const at::Tensor& like) {
  return state_updates_in_place(state, like.scalar_type());
}

// One form's state hand-over for a cache with one recurrent `state`: the core runs from the
// cache's state in `type` (undefined, i.e. zeros, without a cache), its final state is written
// back into the cache's own tensor (see store_state) and the cache advances by `tokens`.
// core(initial_state) returns (output, final_state).
template <typename CacheT, typename Core>
at::Tensor run_on_state(CacheT* cache, int64_t tokens, at::ScalarType type, const Core& core) {
  std::pair<at::Tensor, at::Tensor> result = core(cache ? cache->state.to(type) : at::Tensor());
  if (cache) {
    store_state(cache->state, result.second);
    cache->tokens += tokens;
  }
  return result.first;
}

}  // namespace prime::model
