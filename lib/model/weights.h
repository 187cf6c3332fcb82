// Taking a module's weights out of a name -> tensor map with shape checks that name the layer.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

namespace prime::model {

// Tensors of one checkpoint (or one module), keyed by full or prefix-relative name.
using TensorMap = std::map<std::string, at::Tensor>;

// Returns weights.at(prefix + name) after checking its shape equals `shape`; throws a UserError
// naming `prefix + name`, the expected and the actual shape otherwise (or if it is missing).
at::Tensor take_weight(const TensorMap& weights, const std::string& prefix, const std::string& name,
                       const std::vector<int64_t>& shape);

// Like take_weight, but an absent tensor returns an undefined tensor.
at::Tensor take_optional_weight(const TensorMap& weights, const std::string& prefix,
                                const std::string& name, const std::vector<int64_t>& shape);

std::string shape_string(at::IntArrayRef shape);

// Mixture-of-experts tensors named P.experts.<e>.S for e = 0..E-1 (same shape, dtype and device)
// become slices of one [E, ...] tensor each: the map entries are replaced by views of it, so the
// experts take no more memory than before once the per-expert originals are dropped, and a MoE
// layer can run all of them in one grouped GEMM (stacked_view finds the stack again).
void stack_expert_tensors(TensorMap& weights);

// The [E, ...] tensor whose consecutive slices `parts` are (one storage, one contiguous part
// after the other), as a view; an undefined tensor when they are not laid out that way.
at::Tensor stacked_view(const std::vector<at::Tensor>& parts);

}  // namespace prime::model
