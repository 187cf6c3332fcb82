// Saving a handful of named tensors as one .safetensors file, atomically (temp file + rename).
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <string>

namespace prime::io {

void save_tensor_file(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace prime::io
