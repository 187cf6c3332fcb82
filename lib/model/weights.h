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

}  // namespace prime::model
