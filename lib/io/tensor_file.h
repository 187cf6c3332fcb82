// Saving a handful of named tensors as one .safetensors file, atomically (io::AtomicFile: a hidden
// staging file renamed into place).
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <string>

namespace prime::io {

// An existing file at `path` is replaced only with `overwrite` (one that appears while this
// writes too); otherwise, and for a directory there, a UserError naming `flag` and nothing written.
void save_tensor_file(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {}, bool overwrite = true,
                      const std::string& flag = "output");

}  // namespace prime::io
