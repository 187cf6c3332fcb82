#include "model/weights.h"

#include <sstream>

#include "util/error.h"

namespace prime::model {

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

at::Tensor take_optional_weight(const TensorMap& weights, const std::string& prefix,
                                const std::string& name, const std::vector<int64_t>& shape) {
  auto found = weights.find(prefix + name);
  if (found == weights.end()) return at::Tensor();
  if (found->second.sizes() != at::IntArrayRef(shape))
    throw user_error("tensor ", prefix, name, " has shape ", shape_string(found->second.sizes()),
                     " but the config implies ", shape_string(shape));
  return found->second;
}

at::Tensor take_weight(const TensorMap& weights, const std::string& prefix, const std::string& name,
                       const std::vector<int64_t>& shape) {
  at::Tensor tensor = take_optional_weight(weights, prefix, name, shape);
  if (!tensor.defined()) throw user_error("missing tensor ", prefix, name);
  return tensor;
}

}  // namespace prime::model
