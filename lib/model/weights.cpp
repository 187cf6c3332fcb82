#include "model/weights.h"

#include <cctype>
#include <map>
#include <sstream>
#include <utility>

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

at::Tensor stacked_view(const std::vector<at::Tensor>& parts) {
  if (parts.empty() || !parts[0].defined()) return at::Tensor();
  const at::Tensor& first = parts[0];
  const int64_t numel = first.numel();
  for (size_t e = 0; e < parts.size(); ++e) {
    const at::Tensor& part = parts[e];
    if (!part.defined() || part.sizes() != first.sizes() || part.scalar_type() != first.scalar_type() ||
        part.device() != first.device() || !part.is_contiguous() || part.requires_grad() ||
        !part.is_alias_of(first) || part.storage_offset() != first.storage_offset() + static_cast<int64_t>(e) * numel)
      return at::Tensor();
  }
  std::vector<int64_t> sizes{static_cast<int64_t>(parts.size())}, strides{numel};
  sizes.insert(sizes.end(), first.sizes().begin(), first.sizes().end());
  strides.insert(strides.end(), first.strides().begin(), first.strides().end());
  return first.as_strided(sizes, strides);
}

void stack_expert_tensors(TensorMap& weights) {
  // (name before the expert index, name after it) -> expert index -> full name
  std::map<std::pair<std::string, std::string>, std::map<int64_t, std::string>> groups;
  const std::string marker = ".experts.";
  for (const auto& [name, tensor] : weights) {
    const size_t at = name.find(marker);
    if (at == std::string::npos || !at::isFloatingType(tensor.scalar_type())) continue;
    size_t end = at + marker.size();
    while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
    if (end == at + marker.size() || end >= name.size() || name[end] != '.') continue;
    const int64_t expert = std::stoll(name.substr(at + marker.size(), end - at - marker.size()));
    groups[{name.substr(0, at + marker.size()), name.substr(end)}][expert] = name;
  }
  for (const auto& [key, members] : groups) {
    // Only a complete run 0..E-1 of one shape is a layer's experts; anything else stays as it is.
    if (members.rbegin()->first != static_cast<int64_t>(members.size()) - 1) continue;
    std::vector<at::Tensor> parts;
    for (const auto& [expert, name] : members) parts.push_back(weights.at(name));
    bool uniform = true;
    for (const auto& part : parts)
      uniform = uniform && part.sizes() == parts[0].sizes() && part.scalar_type() == parts[0].scalar_type() &&
                part.device() == parts[0].device() && !part.requires_grad();
    if (!uniform || stacked_view(parts).defined()) continue;
    const at::Tensor stacked = at::stack(parts);
    parts.clear();  // the originals go as their entries are replaced: one group's copy at most at a time
    int64_t expert = 0;
    for (const auto& entry : members) weights[entry.second] = stacked.select(0, expert++);
  }
}

}  // namespace prime::model
