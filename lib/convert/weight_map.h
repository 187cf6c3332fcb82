// How each tensor of a converted layer is made from the source attention layer
// (design/ssm-layers.md, "Initialisation from attention"). One file per target type holds its
// map: gka_init.cpp, gdn_init.cpp, mamba2_init.cpp, swa_init.cpp. This header holds what they
// share: the recipes, the description of one output tensor, and seeded initialisers.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "io/source.h"

namespace prime::convert {

// --init: hmf (HMF's mapping, gate from row-repeated W_V), head (gate from head-aligned W_V
// blocks), mambainllama (the gate, Mamba-2's z, and dt left random), random (no transfer).
enum class InitRecipe { Hmf, Head, MambaInLlama, Random };
InitRecipe parse_init_recipe(const std::string& text);  // UserError listing the recipes
std::string init_recipe_name(InitRecipe recipe);
std::string init_recipe_description(InitRecipe recipe);

// Read access to source tensors while the output is produced.
class SourceReader {
 public:
  virtual ~SourceReader() = default;
  virtual at::Tensor tensor(const std::string& name) const = 0;
};

// One output tensor: what it is, what it reads, and how to make it.
struct TargetTensor {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  std::string how;                   // for the plan: "copy", "N(0, 0.02)", "0.5*(W_O^T + R_row(W_V))", ...
  std::vector<std::string> sources;  // the source tensors it reads (none for random or constant ones)
  // sources[0] unchanged but for the dtype: the writer streams it in pieces, never whole.
  bool copy = false;
  // Makes the whole tensor (dtype and shape as above). Set for every target, copies included.
  std::function<at::Tensor(const SourceReader&)> make;

  uint64_t nbytes() const;
};

// A layer's source attention tensors by role (empty: absent in this family or config).
struct AttentionSource {
  std::string q, k, v, o;  // *_proj.weight
  std::string q_bias, k_bias, v_bias, o_bias;
  std::string q_norm, k_norm;
  std::vector<std::string> all() const;  // the non-empty ones
};
AttentionSource attention_source(const io::ModelConfig& source, int64_t layer);

// Everything a per-type weight map needs for one layer.
struct LayerInit {
  int64_t layer = 0;
  std::string symbol;                  // the target type: GKA, GDN, M2, SWA
  const io::ModelConfig* source = nullptr;
  InitRecipe recipe = InitRecipe::Hmf;
  uint64_t seed = 0;
  at::ScalarType dtype = at::kFloat;   // new weights (A_log, dt_bias and D are fp32 regardless)
  std::optional<at::ScalarType> forced_dtype;  // --dtype: copies are cast to it too
  std::function<at::ScalarType(const std::string&)> source_dtype;  // a source tensor's dtype
  AttentionSource attention;
  std::string prefix;                  // the mixer's tensor prefix, e.g. "model.layers.3.gka."
  std::vector<io::TensorSpec> specs;   // the mixer's tensors (mixer_tensor_specs), full names
};

// The tensors of one converted layer, one per init.specs entry in that order; InternalError
// for a spec the map does not know (the specs and the maps must move together).
std::vector<TargetTensor> layer_targets(const LayerInit& init);
std::vector<TargetTensor> gka_targets(const LayerInit& init);
std::vector<TargetTensor> gdn_targets(const LayerInit& init);
std::vector<TargetTensor> mamba2_targets(const LayerInit& init);
std::vector<TargetTensor> swa_targets(const LayerInit& init);

// ---- building blocks ------------------------------------------------------------------------
// Random values are seeded per output tensor name (and a part tag): the same name, shape and
// seed always give the same bytes, whatever else is converted and however threads are timed.
uint64_t tensor_seed(const std::string& name, uint64_t seed);
at::Tensor normal_init(const std::string& name, at::IntArrayRef shape, uint64_t seed);  // N(0, 0.02), fp32
// A ~ U(0, 16) (floored at 1e-6 so the log stays finite), A_log = log A; fp32.
at::Tensor a_log_init(const std::string& name, int64_t heads, uint64_t seed);
// dt = exp(U(ln 1e-3, ln 0.1)) clamped >= 1e-4; dt_bias = dt + log(-expm1(-dt)), the inverse of
// softplus, so softplus(dt_bias) = dt; fp32.
at::Tensor dt_bias_init(const std::string& name, int64_t heads, uint64_t seed);

// R(W_V): W_V [Hkv*D, d] expanded to `rows` = G*Hkv*D rows. RowRepeat (HMF): row r <- row
// floor(r/G), which does not line up with the forward's head expansion; HeadRepeat: row
// e*D + j <- row floor(e/G)*D + j (whole head blocks, as the forward expands heads).
enum class GateMode { RowRepeat, HeadRepeat };
at::Tensor repeat_value_rows(const at::Tensor& v_proj, int64_t rows, int64_t head_dim, GateMode mode);
// 0.5 * (W_O^T + R(W_V)), the output gate's initialisation [rows, d], computed in fp32 and
// rounded once into `out` (any floating dtype), a block of whole kv-head groups at a time so the
// fp32 temporaries stay a few MB whatever the model size.
void write_gate(const at::Tensor& o_proj, const at::Tensor& v_proj, int64_t head_dim, GateMode mode, at::Tensor out);
// The same into a new tensor of `dtype` (fp32 by default).
at::Tensor gate_from_attention(const at::Tensor& o_proj, const at::Tensor& v_proj, int64_t head_dim, GateMode mode,
                               at::ScalarType dtype = at::kFloat);

// Target builders used by the maps.
TargetTensor copy_target(const LayerInit& init, const std::string& name, const std::string& source_name,
                         std::vector<int64_t> shape);
TargetTensor normal_target(const LayerInit& init, const std::string& name, std::vector<int64_t> shape);
TargetTensor fill_target(const std::string& name, at::ScalarType dtype, std::vector<int64_t> shape, double value);
TargetTensor a_log_target(const LayerInit& init, const std::string& name, int64_t heads);
TargetTensor dt_bias_target(const LayerInit& init, const std::string& name, int64_t heads);
// A weight transferred from `source_name` (copy), or N(0, 0.02) under --init random.
TargetTensor transfer_target(const LayerInit& init, const std::string& name, const std::string& source_name,
                             std::vector<int64_t> shape);
// The output gate g_proj (GKA, GDN) by recipe: hmf row-repeat, head, or random.
TargetTensor gate_target(const LayerInit& init, const std::string& name, std::vector<int64_t> shape);

}  // namespace prime::convert
