#include "io/tensor_file.h"

#include "io/atomic_dir.h"
#include "io/dtype.h"
#include "io/safetensors_writer.h"
#include "util/error.h"

namespace prime::io {

void save_tensor_file(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata, bool overwrite, const std::string& flag) {
  AtomicFile file(path, overwrite, flag);
  // The writer fills a directory: a hidden one beside the file (AtomicDirectory's staging, never
  // committed; its name's prefix is the same in every run, so what a killed run left is removed here).
  const auto parent = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  AtomicDirectory scratch(parent / (path.filename().string() + ".staging"), /*overwrite=*/true);
  WriterOptions options;
  options.metadata = metadata;
  options.max_shard_bytes = UINT64_MAX;
  SafetensorsWriter writer(scratch.staging(), options);
  for (const auto& [name, tensor] : tensors) {
    at::Tensor value = tensor;
    writer.add(name, from_scalar_type(tensor.scalar_type()),
               std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end()), [value] { return value; });
  }
  writer.write();
  std::filesystem::rename(scratch.staging() / "model.safetensors", file.staging());
  file.commit();
}

}  // namespace prime::io
